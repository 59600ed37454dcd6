"""Write a tiny Qwen2 model and its byte-level BPE tokenizer as a real GGUF file, with no download.

The layout is what llama.cpp's `convert_hf_to_gguf.py` writes for a Qwen2 checkpoint, restricted to
what transformers' GGUF loader reads back: `qwen2.*` hyperparameters, `tokenizer.ggml.*` metadata
(model "gpt2", i.e. byte-level BPE) and F32 tensors under llama.cpp's names. F32 keeps the round trip
exact, so a test can compare logits tightly and a failure points at the loader, not at quantization.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

# llama.cpp's per-layer tensor names -> the Qwen2ForCausalLM submodule they come from.
LAYER_TENSORS = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def _tensors(model) -> dict[str, np.ndarray]:
    """GGUF name -> F32 array, in the file's order (embedding, blocks, final norm, output)."""
    state = {k: v.detach().to("cpu").float().numpy() for k, v in model.state_dict().items()}
    out = {"token_embd.weight": state["model.embed_tokens.weight"]}
    for i in range(model.config.num_hidden_layers):
        for gguf_name, hf_name in LAYER_TENSORS.items():
            for suffix in ("weight", "bias"):  # only q/k/v carry a bias in Qwen2
                key = f"model.layers.{i}.{hf_name}.{suffix}"
                if key in state:
                    out[f"blk.{i}.{gguf_name}.{suffix}"] = state[key]
    out["output_norm.weight"] = state["model.norm.weight"]
    # llama.cpp omits `output` when it is the embedding matrix; transformers then infers tying.
    if not model.config.tie_word_embeddings:
        out["output.weight"] = state["lm_head.weight"]
    # No Q/K row permutation: transformers un-permutes only for `llama` (LlamaTensorProcessor), and
    # llama.cpp permutes only llama-family models, so Qwen2 rows are stored in Hugging Face order.
    return out


def _merges(tokenizer) -> list[str]:
    """The BPE merges as "left right" strings, in rank order, whichever way tokenizers serializes them."""
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    return [m if isinstance(m, str) else " ".join(m) for m in merges]


def write_gguf(path: Path, model, tokenizer) -> Path:
    """Write `model` (a Qwen2ForCausalLM) and `tokenizer` (byte-level BPE, fast) to `path`; return it."""
    from gguf import GGUFWriter, TokenType

    cfg = model.config
    path = Path(path)
    writer = GGUFWriter(str(path), arch="qwen2")
    writer.add_name("tiny-qwen2")
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    rope = getattr(cfg, "rope_parameters", None) or {}  # transformers 5 keeps theta here
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_file_type(0)  # 0 = ALL_F32

    # Tokens by id, with no holes: a GGUF vocabulary is a list, so ids are positions.
    vocab = tokenizer.get_vocab()
    tokens = [None] * len(vocab)
    for token, index in vocab.items():
        tokens[index] = token
    if None in tokens:
        raise ValueError("tokenizer ids are not contiguous; a GGUF token list cannot express that")
    # Added special tokens are CONTROL (loaded back as special, matched whole); other added tokens
    # USER_DEFINED; everything else NORMAL -- the classification convert_hf_to_gguf.py uses.
    added = tokenizer.added_tokens_decoder
    types = [TokenType.NORMAL] * len(tokens)
    for index, added_token in added.items():
        types[index] = TokenType.CONTROL if added_token.special else TokenType.USER_DEFINED
    writer.add_tokenizer_model("gpt2")
    # No `tokenizer.ggml.pre`: the tiny tokenizer splits with GPT-2's ByteLevel regex, which is what
    # the loader keeps when no pre-tokenizer name is given (naming "qwen2" would switch regexes).
    writer.add_token_list(tokens)
    writer.add_token_types([int(t) for t in types])
    writer.add_token_merges(_merges(tokenizer))
    for setter, token_id in ((writer.add_eos_token_id, tokenizer.eos_token_id),
                             (writer.add_bos_token_id, tokenizer.bos_token_id),
                             (writer.add_pad_token_id, tokenizer.pad_token_id)):
        if token_id is not None:
            setter(token_id)
    writer.add_add_bos_token(False)  # Qwen-style: nothing is prepended to a prompt
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)

    for name, array in _tensors(model).items():
        writer.add_tensor(name, np.ascontiguousarray(array, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
