"""Tiny random models with one shared byte-level BPE tokenizer, built from a config in seconds.

They go through the same loading code as real models (save_pretrained folders). A larger
initializer range than the default makes next-token entropies spread over (0, 1), so an
intermediate tau really switches in both directions.
"""

from __future__ import annotations

from pathlib import Path

import torch

CORPUS = [
    "the quick brown fox jumps over the lazy dog. 12 + 30 = 42.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))",
    "Natalia sold clips to 48 of her friends in April. The answer is 72.",
    "naïve café, crème brûlée, 日本語のテキスト, emoji 🙂 and Ünïcödé.",
    "Step 1: multiply. Step 2: add. #### 18",
] * 20
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tokenizer(vocab_size: int = 384):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(vocab_size: int, seed: int, layers: int = 2, hidden: int = 64, init: float = 0.35,
                max_positions: int = 512, eos_token_id: int = 0):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=max_positions, initializer_range=init,
                         tie_word_embeddings=False, eos_token_id=eos_token_id, bos_token_id=None,
                         pad_token_id=eos_token_id)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).eval()
    model.generation_config.eos_token_id = eos_token_id
    model.generation_config.pad_token_id = eos_token_id
    return model


def save_pair(root: Path, **llm_overrides) -> tuple[Path, Path]:
    """Write an SLM folder and an LLM folder sharing one tokenizer; return their paths."""
    tokenizer = build_tokenizer()
    eos = tokenizer.eos_token_id
    vocab = len(tokenizer)
    paths = []
    for name, kwargs in (("slm", dict(seed=0, layers=2)), ("llm", dict(seed=1, layers=3, **llm_overrides))):
        folder = root / name
        build_model(vocab, eos_token_id=eos, **kwargs).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        paths.append(folder)
    return paths[0], paths[1]


def make_router(slm, tau: float = 0.5, always: bool | None = None, seed: int = 0):
    """A LearnedRouter for the runner `slm`: random weights, or forced to always hand over (True)
    or always keep (False) by a large output bias."""
    from rstitch_core.router import LearnedRouter, RouterConfig, slm_fingerprint

    torch.manual_seed(seed)
    router = LearnedRouter(RouterConfig(slm_name="tiny-slm", slm_fingerprint=slm_fingerprint(slm),
                                        hidden_size=slm.hidden_size, tau=tau, max_context=slm.max_context))
    if always is not None:
        with torch.no_grad():
            router.net.mlp[-1].bias.fill_(50.0 if always else -50.0)
    return router
