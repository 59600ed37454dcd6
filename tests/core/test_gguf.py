"""The GGUF path of `load_model`, on a real (tiny, F32) GGUF file written on the spot."""

from __future__ import annotations

import pytest
import torch

from gguf_writer import write_gguf
from rstitch_core.models.loading import load_model
from tiny_models import build_model, build_tokenizer

# Multi-digit numbers tell GPT-2's split regex from Qwen2's (which cuts digits one by one);
# multi-byte text exercises the byte alphabet; the special tokens must stay whole.
TEXTS = [
    "the quick brown fox jumps over the lazy dog. 12 + 30 = 42, 12345.",
    "naïve café, crème brûlée, 日本語のテキスト, emoji 🙂 and Ünïcödé.",
    "def add(a, b):\n    return a + b\n\n\n   trailing  spaces ",
    "<|im_start|>user\nhi<|im_end|>\n<|endoftext|>",
]


@pytest.fixture(scope="module")
def original():
    tokenizer = build_tokenizer()
    return tokenizer, build_model(len(tokenizer), seed=0, layers=2, eos_token_id=tokenizer.eos_token_id)


@pytest.fixture(scope="module")
def gguf_path(original, tmp_path_factory):
    tokenizer, model = original
    return write_gguf(tmp_path_factory.mktemp("gguf") / "tiny-qwen2-f32.gguf", model, tokenizer)


@pytest.fixture(scope="module")
def loaded(gguf_path):
    return load_model(str(gguf_path), dtype="float32")


def test_gguf_tokenizer_matches_original(original, loaded):
    tokenizer, _ = original
    assert loaded.tokenizer.get_vocab() == tokenizer.get_vocab()
    assert loaded.tokenizer.eos_token_id == tokenizer.eos_token_id
    assert loaded.eos_token_ids == frozenset({tokenizer.eos_token_id})
    for text in TEXTS:
        ids = tokenizer.encode(text)
        assert loaded.tokenizer.encode(text) == ids, text
        assert loaded.tokenizer.decode(ids) == text
    messages = [{"role": "user", "content": "12 + 30?"}]
    assert (loaded.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            == tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))


def test_gguf_model_logits_match_original(original, loaded):
    tokenizer, model = original
    assert loaded.dtype == torch.float32
    assert loaded.vocab_size == model.config.vocab_size
    assert loaded.model.config.num_hidden_layers == 2
    ids = torch.tensor([tokenizer.encode(TEXTS[0] + " " + TEXTS[1])])
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        actual = loaded.model(input_ids=ids).logits
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)
    # and through the runner's incremental path (prefill, then one decode step)
    cache = loaded.new_cache()
    loaded.forward(cache, ids[0, :-1].tolist())
    step = loaded.forward(cache, ids[0, -1:].tolist())
    torch.testing.assert_close(step.logits[0], expected[0, -1], atol=1e-4, rtol=1e-4)


def test_gguf_loads_in_bfloat16(gguf_path):
    runner = load_model(str(gguf_path), dtype="bfloat16")
    assert runner.dtype == torch.bfloat16
    assert {p.dtype for p in runner.model.parameters()} == {torch.bfloat16}
