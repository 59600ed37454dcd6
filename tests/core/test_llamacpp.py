"""The llama.cpp backend (models/llamacpp.py) on the tiny pair written as F32 GGUF files: the same
weights as the torch backend's, so the two must agree up to llama.cpp's arithmetic (an f16 KV
cache, its own kernels); within the backend, a cropped cache, a fresh prefill and batched rows agree."""

from __future__ import annotations

import pytest
import torch

from rstitch_core import Engine, Generation, RoutingParams, SamplingParams
from rstitch_core.drafting.profiling import Grid, profile_pair
from rstitch_core.models.backend import PassRequest
from rstitch_core.models.loading import load_model, resolve_backend
from rstitch_core.router import RouterError

PROMPTS = ["the quick brown fox", "def add(a, b):", "Natalia sold clips"]
# llama.cpp keeps keys/values in f16 and sums in its own order: logits of the tiny models (|x| up to
# ~10) agree with float32 torch to about 0.05; a bug (a wrong position, a stale cache row) is off by ~1.
LOGIT_ATOL = 0.15


@pytest.fixture(scope="module")
def llm(llamacpp_engine):
    return llamacpp_engine.llm


def test_logits_match_the_torch_backend_for_the_same_weights(llm, engine):
    ids = engine.tokenizer("the quick brown fox jumps over the lazy dog")["input_ids"]
    torch_cache, llama_cache = engine.llm.new_cache(), llm.new_cache()
    try:
        want = engine.llm.forward(torch_cache, ids, num_logits=4).logits
        got = llm.forward(llama_cache, ids, num_logits=4).logits
        assert got.shape == want.shape == (4, engine.llm.vocab_size) and got.dtype == torch.float32
        torch.testing.assert_close(got, want, atol=LOGIT_ATOL, rtol=0)
        for token in (5, 17, 42):  # decode steps on top of the prefill
            want = engine.llm.forward(torch_cache, [token]).logits
            got = llm.forward(llama_cache, [token]).logits
            torch.testing.assert_close(got, want, atol=LOGIT_ATOL, rtol=0)
        assert llama_cache.num_tokens == torch_cache.num_tokens == len(ids) + 3
    finally:
        llama_cache.release()


def test_a_cropped_cache_equals_a_fresh_prefill_of_the_kept_tokens(llm):
    ids = list(range(10, 40))
    cache, fresh = llm.new_cache(), llm.new_cache()
    try:
        llm.forward(cache, ids, num_logits=1)
        cache.crop(12)  # rejected drafts: positions 12.. are forgotten
        got = llm.forward(cache, [7, 8, 9], num_logits=3).logits
        want = llm.forward(fresh, ids[:12] + [7, 8, 9], num_logits=3).logits
        torch.testing.assert_close(got, want, atol=1e-3, rtol=0)
        assert cache.num_tokens == fresh.num_tokens == 15
    finally:
        cache.release(), fresh.release()


def test_batched_rows_equal_single_passes(llm):
    histories = [list(range(3, 20)), list(range(50, 55)), list(range(100, 130))]
    feeds = [([1, 2, 3], 3), ([4], 1), ([5, 6], 1)]
    single, batched = [llm.new_cache() for _ in histories], [llm.new_cache() for _ in histories]
    try:
        for caches in (single, batched):
            for cache, history in zip(caches, histories):
                llm.forward(cache, history)
        want = [llm.forward(c, ids, n).logits for c, (ids, n) in zip(single, feeds)]
        got = llm.run([PassRequest(c, ids, n) for c, (ids, n) in zip(batched, feeds)])  # one llama_decode
        for (logits, hidden), w in zip(got, want):
            assert hidden is None
            # llama.cpp's sums depend on the batch's shape (measured up to 2e-3 here); a row given
            # another row's cache or positions would be off by about 1.
            torch.testing.assert_close(logits, w, atol=2e-2, rtol=0)
        assert [c.num_tokens for c in batched] == [c.num_tokens for c in single]
    finally:
        for cache in single + batched:
            cache.release()


def test_release_frees_the_sequence_and_its_kv_memory(llm):
    before = llm.slots_in_use
    cache = llm.new_cache()
    llm.forward(cache, [1, 2, 3, 4])
    slot = cache.slot
    assert llm.slots_in_use == before + 1 and llm._lc.llama_memory_seq_pos_max(llm._memory, slot) == 3
    cache.release()
    assert llm.slots_in_use == before and cache.slot == -1
    assert llm._lc.llama_memory_seq_pos_max(llm._memory, slot) == -1  # nothing left in llama.cpp's memory
    with pytest.raises(ValueError, match="released"):
        llm.forward(cache, [1])


def test_every_sequence_in_use_is_a_clear_error(gguf_pair):
    runner = load_model(str(gguf_pair[1]), backend="llamacpp", name="llm", max_sequences=2)
    caches = [runner.new_cache(), runner.new_cache()]
    with pytest.raises(RuntimeError, match="all 2 llama.cpp sequences are in use"):
        runner.new_cache()
    caches[0].release()
    runner.new_cache()  # a released id is reused


@pytest.mark.parametrize("policy", ["verified", "speculative"])
def test_exact_acceptance_equals_llm_only_greedy(llamacpp_engine, policy):
    sampling = SamplingParams(max_new_tokens=32)
    for prompt in PROMPTS:
        llm = Generation.collect(llamacpp_engine.generate(prompt, sampling=sampling, routing=RoutingParams(policy="llm")))
        got = Generation.collect(llamacpp_engine.generate(prompt, sampling=sampling, routing=RoutingParams(
            policy=policy, threshold=0.5, draft_tokens=4)))
        assert got.token_ids == llm.token_ids, prompt


def test_rstitch_switches_both_ways_and_its_bounds_are_the_single_models(llamacpp_engine):
    sampling = SamplingParams(max_new_tokens=40)
    prompt = PROMPTS[0]

    def run(**routing):
        return Generation.collect(llamacpp_engine.generate(prompt, sampling=sampling, routing=RoutingParams(**routing)))

    assert run(policy="rstitch", threshold=0.0).token_ids == run(policy="llm").token_ids
    assert run(policy="rstitch", threshold=1.0).token_ids == run(policy="slm").token_ids
    mid = run(policy="rstitch", threshold=0.5)
    assert mid.stats.switches_slm_to_llm > 0 and mid.stats.switches_llm_to_slm > 0


def test_the_backends_decode_the_tiny_pair_alike(llamacpp_engine, engine):
    """Greedy text from the same weights: f16 KV rounding may flip a near-tie, so the first tokens
    are compared, where no tie was seen (a wrong position or cache would differ at once). llama.cpp
    also stops on its own end-of-generation tokens (here <|im_end|> too), so it may stop sooner."""
    sampling = SamplingParams(max_new_tokens=8)
    assert llamacpp_engine.llm.eos_token_ids >= engine.llm.eos_token_ids
    for prompt in PROMPTS:
        want = Generation.collect(engine.generate(prompt, sampling=sampling, routing=RoutingParams(policy="llm")))
        got = Generation.collect(llamacpp_engine.generate(prompt, sampling=sampling, routing=RoutingParams(policy="llm")))
        assert got.token_ids == want.token_ids[:len(got.token_ids)], prompt
        assert len(got.token_ids) == len(want.token_ids) or got.token_ids[-1] in llamacpp_engine.llm.eos_token_ids


def test_profile_prices_this_backends_own_passes(llamacpp_engine):
    grid = Grid(contexts=(8, 32), sizes=(1, 2, 4), prefills=(8,), batch_rows=(2,), batch_sizes=(1, 2),
                min_seconds=0, max_reps=1, rounds=1)
    profile = profile_pair(llamacpp_engine.slm, llamacpp_engine.llm, grid)
    assert profile.key.dtype == "gguf" and profile.key.llm.endswith("-ALL_F32") and profile.batched
    assert all(p[4] > 0 for p in profile.points["llm"])
    assert llamacpp_engine.llm.slots_in_use == 0  # the profiler's sequences were all released


def test_rstitch_plus_is_refused_with_one_clear_message(llamacpp_engine, engine):
    from tiny_models import make_router

    router = make_router(engine.slm)  # trained (here: made) for the torch SLM of the same weights
    with pytest.raises(RouterError, match="llama.cpp backend does not give the final hidden state"):
        router.bind(llamacpp_engine.slm)


def test_backend_choice():
    assert resolve_backend("auto", ["a.gguf", "b.gguf"], "cpu")[0] == "llamacpp"
    assert resolve_backend("auto", ["folder", "b.gguf"], "cpu")[0] == "torch"
    assert resolve_backend("auto", ["a.gguf", "b.gguf"], "cuda:0")[0] == "torch"
    assert resolve_backend("torch", ["a.gguf", "b.gguf"], "cpu")[0] == "torch"
    with pytest.raises(ValueError, match="runs GGUF files; 'folder' is not one"):
        resolve_backend("llamacpp", ["folder", "b.gguf"], "cpu")
    with pytest.raises(ValueError, match="GPUs use --backend torch"):
        resolve_backend("llamacpp", ["a.gguf", "b.gguf"], "cuda")
    with pytest.raises(ValueError, match="unknown backend 'vllm'"):
        resolve_backend("vllm", ["a.gguf"], "cpu")


def test_torch_only_options_are_refused_on_llamacpp(gguf_pair):
    with pytest.raises(ValueError, match="--prefill applies to the torch backend"):
        from rstitch_core.models.prefill import PrefillSpec

        load_model(str(gguf_pair[1]), backend="llamacpp", prefill=PrefillSpec("float32", 8))
    with pytest.raises(ValueError, match="does not exist"):
        Engine.load("/nowhere/a.gguf", "/nowhere/b.gguf", backend="llamacpp")
