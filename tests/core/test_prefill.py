"""Long passes on a float32 copy of a bf16 model: same cache, same interface, float32 accuracy."""

from __future__ import annotations

import copy

import pytest
import torch

from rstitch_core.events import ModelStats
from rstitch_core.models.loading import load_model
from rstitch_core.models.prefill import PrefillCopy, PrefillSpec
from rstitch_core.models.runner import ModelRunner
from rstitch_core.models.step_engine import Budget, StepEngine
from rstitch_core.sequence import ModelState
from tiny_models import build_model, build_tokenizer

PROMPT = list(range(5, 25))  # 20 tokens: a "prompt prefill" for a copy taking passes of >= 4


@pytest.fixture(scope="module")
def runners():
    tokenizer = build_tokenizer()
    fp32 = build_model(len(tokenizer), seed=0, eos_token_id=tokenizer.eos_token_id)
    bf16 = copy.deepcopy(fp32).to(torch.bfloat16)
    return {"float32": ModelRunner(copy.deepcopy(fp32), tokenizer, "fp32"),
            "bfloat16": ModelRunner(copy.deepcopy(bf16), tokenizer, "bf16"),
            "mixed": ModelRunner(bf16, tokenizer, "mixed", prefill=PrefillCopy(fp32, min_tokens=4))}


def passes(runner, new_cache=None):
    """A prompt prefill (20 tokens), a decode step, a 5-token verify pass: logits of each."""
    cache = (new_cache or runner.new_cache)()
    out = [runner.forward(cache, PROMPT, num_logits=2, hidden=True)]
    out.append(runner.forward(cache, [30]))
    out.append(runner.forward(cache, [31, 32, 33, 34, 35], num_logits=5))
    return cache, out


def test_long_passes_run_on_the_copy_and_the_cache_stays_in_the_model_dtype(runners):
    _, ref = passes(runners["float32"])
    _, bf16 = passes(runners["bfloat16"])
    cache, mixed = passes(runners["mixed"])
    assert cache.num_tokens == len(PROMPT) + 6
    assert all(layer.keys.dtype == torch.bfloat16 for layer in cache.kv.layers)
    assert mixed[0].hidden.dtype == torch.bfloat16  # as the model's own passes give it
    # The prompt's logits come from float32 weights: closer to float32 than bf16's are
    err_mixed = (mixed[0].logits - ref[0].logits).abs().max()
    err_bf16 = (bf16[0].logits - ref[0].logits).abs().max()
    assert err_mixed < err_bf16 / 2  # (the keys/values it attends are stored in bf16)
    # Later passes run in bf16 over the bf16 cache the copy filled: bf16-sized errors, same argmax mostly.
    for m, r in zip(mixed[1:], ref[1:]):
        assert m.logits.shape == r.logits.shape and (m.logits - r.logits).abs().max() < 0.5


def test_batched_passes_match_single_ones(runners):
    """Three sequences' passes in one engine's steps: prompt rows on the copy, decode rows on the
    model, in any mix, give the logits each gets alone."""
    single = [o.logits for o in passes(runners["mixed"])[1]]
    engine = StepEngine(runners["mixed"], Budget(4))
    results: dict = {}

    def session(i):
        state = ModelState("llm", engine, ModelStats())
        out = [(yield from state.step(PROMPT, turn_start=True, num_logits=2, hidden=True))]
        out.append((yield from state.step(PROMPT + [30], turn_start=False)))
        out.append((yield from state.step(PROMPT + [30, 31, 32, 33, 34, 35], turn_start=False, num_logits=5)))
        results[i] = [o.logits for o in out]
        state.release()

    for i in range(3):
        engine.submit(session(i), lambda _: None, lambda _: None)
    while engine.has_work:
        engine.step()
    assert len(results) == 3 and engine.stats.max_rows == 3 and engine.slots_in_use == 0
    for logits in results.values():
        for b, s in zip(logits, single):
            torch.testing.assert_close(b, s, atol=2e-2, rtol=0)


def test_spec_parsing_and_validation():
    assert PrefillSpec.parse("off") is None
    assert PrefillSpec.parse("float32") == PrefillSpec("float32", 32)
    assert PrefillSpec.parse("float32:24") == PrefillSpec("float32", 24) and str(PrefillSpec("float32", 24)) == "float32:24"
    for bad, message in (("int8", "prefill dtype must be one of"), ("float32:1", "min_tokens must be an int >= 2"),
                         ("float32:x", "expected off, DTYPE or DTYPE:MIN_TOKENS, got 'float32:x'")):
        with pytest.raises(ValueError, match=message):
            PrefillSpec.parse(bad)


def test_load_model_loads_the_copy_and_refuses_a_useless_one(pair_dirs):
    runner = load_model(str(pair_dirs[1]), "bfloat16", name="llm", prefill=PrefillSpec("float32", 8))
    assert runner.dtype == torch.bfloat16 and runner.prefill.dtype == torch.float32 and runner.prefill.takes(8)
    assert not runner.prefill.takes(7)
    with pytest.raises(ValueError, match="the prefill dtype float32 is the model's own dtype"):
        load_model(str(pair_dirs[1]), "float32", name="llm", prefill=PrefillSpec("float32", 8))
