"""R-Stitch and the single-model policies: exactness against HF generate and a cache-free oracle."""

import copy

import pytest
import torch

from core.reference import naive_rstitch
from rstitch_core import Generation, RouterInput, RoutingParams, SamplingParams, SwitchEvent, TokenEvent
from rstitch_core.models.runner import KVCache
from rstitch_core.policies.loop import run_local
from rstitch_core.sampling import Sampler
from rstitch_core.sequence import ModelState, Sequence

PROMPT = "Natalia sold clips to 48 of her friends"
N = 48


def run(engine, policy, tau=0.5, n=N, **sampling):
    return Generation.collect(engine.generate(PROMPT, sampling=SamplingParams(max_new_tokens=n, **sampling),
                                              routing=RoutingParams(policy=policy, threshold=tau)))


def hf_greedy(runner, ids, n):
    out = runner.model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False)
    return out[0, len(ids):].tolist()


def test_tau_zero_is_llm_greedy_and_tau_one_is_slm_greedy(engine):
    ids = engine.encode(PROMPT)
    at_zero, at_one = run(engine, "rstitch", tau=0.0), run(engine, "rstitch", tau=1.0)
    assert at_zero.token_ids == hf_greedy(engine.llm, ids, N) == run(engine, "llm").token_ids
    assert set(at_zero.sources) == {"llm"} and at_zero.stats.switches_llm_to_slm == 0
    assert at_one.token_ids == hf_greedy(engine.slm, ids, N) == run(engine, "slm").token_ids
    assert set(at_one.sources) == {"slm"} and at_one.stats.switches_slm_to_llm == 0


def _tau_with_margin(engine, ids, candidates, margin=1e-3):
    for tau in candidates:
        ref = naive_rstitch(engine.slm.model, engine.llm.model, ids, tau, N, engine.llm.eos_token_ids)
        if all(abs(h - tau) > margin for h in ref[2]):
            return tau, ref
    pytest.fail("no candidate tau clear of every entropy")


@pytest.mark.parametrize("candidates", [(0.50, 0.51, 0.49), (0.40, 0.41, 0.39), (0.60, 0.61, 0.59)])
def test_intermediate_tau_matches_a_naive_recompute_everything_reference(engine, candidates):
    ids = engine.encode(PROMPT)
    tau, (tokens, sources, entropies) = _tau_with_margin(engine, ids, candidates)
    got = run(engine, "rstitch", tau=tau)
    assert got.stats.switches_slm_to_llm > 0 and got.stats.switches_llm_to_slm > 0  # both directions
    assert got.token_ids == tokens and got.sources == sources
    assert got.entropies == pytest.approx(entropies, abs=1e-5)
    assert got.stats.discarded_tokens == got.stats.switches_slm_to_llm


def _fresh_logits(runner, ids):
    return runner.forward(runner.new_cache(), ids).logits[-1]


def _assert_cache_matches_fresh_prefill(state: ModelState, token_ids, probe: int):
    """Feeding the unseen tail plus a probe token through the cache = a fresh prefill of it all."""
    cache: KVCache = copy.deepcopy(state.cache)
    assert cache.num_tokens == cache.kv.get_seq_length() <= len(token_ids)
    cached = state.runner.forward(cache, token_ids[cache.num_tokens:] + [probe]).logits[-1]
    assert torch.allclose(cached, _fresh_logits(state.runner, token_ids + [probe]), atol=1e-4)


def test_caches_equal_a_fresh_prefill_after_every_switch_and_nothing_is_fed_twice(engine):
    ids = engine.encode(PROMPT)
    seq = Sequence.create(ids, SamplingParams(max_new_tokens=N), engine.tokenizer, engine.llm.eos_token_ids,
                          engine.max_context)
    slm, llm = ModelState("slm", engine.slm, seq.stats.slm), ModelState("llm", engine.llm, seq.stats.llm)
    switches = 0
    for event in run_local(seq, slm, llm, RoutingParams(policy="rstitch", threshold=0.5), Sampler(SamplingParams())):
        if isinstance(event, SwitchEvent):
            switches += 1
            target = llm if event.direction == "slm_to_llm" else slm
            assert event.prefill_tokens == len(seq.token_ids) - target.num_cached >= 1
            for state in (slm, llm):
                if state.cache is not None:
                    _assert_cache_matches_fresh_prefill(state, seq.token_ids, probe=5)
    assert switches >= 4
    for state in (slm, llm):
        # Every position was fed exactly once: no pass recomputed what a cache already held.
        assert state.stats.forward_tokens == state.num_cached
        _assert_cache_matches_fresh_prefill(state, seq.token_ids, probe=7)


def test_switch_events_and_stats_agree(engine):
    events = list(engine.generate(PROMPT, sampling=SamplingParams(max_new_tokens=N),
                                  routing=RoutingParams(policy="rstitch", threshold=0.5)))
    tokens = [e for e in events if isinstance(e, TokenEvent)]
    switches = [e for e in events if isinstance(e, SwitchEvent)]
    stats = events[-1].stats
    assert [t.index for t in tokens] == list(range(len(tokens)))
    assert stats.slm.tokens == sum(t.source == "slm" for t in tokens)
    assert stats.llm.tokens == sum(t.source == "llm" for t in tokens)
    assert len(switches) == stats.switches_slm_to_llm + stats.switches_llm_to_slm
    # The prompt, then each switch's partial prefill, is all that either model prefilled.
    prefilled = {"slm": stats.prompt_tokens, "llm": 0}
    for s in switches:
        prefilled["llm" if s.direction == "slm_to_llm" else "slm"] += s.prefill_tokens
    assert (stats.slm.prefill_tokens, stats.llm.prefill_tokens) == (prefilled["slm"], prefilled["llm"])
    # A switch to the LLM always follows an SLM token (or the start); the LLM's first token follows it.
    for s in switches:
        if s.direction == "slm_to_llm" and s.position < len(tokens):
            assert tokens[s.position].source == "llm"


def test_llm_policy_never_touches_the_slm(engine):
    g = run(engine, "llm")
    assert g.stats.slm.forward_passes == 0 and g.stats.slm.tokens == 0
    assert g.stats.llm.tokens == len(g.token_ids) > 0


class RecordingRouter:
    def __init__(self, decide):
        self.calls, self.decide = [], decide

    def __call__(self, x: RouterInput) -> bool:
        self.calls.append(x)
        return self.decide(x)


def test_router_is_consulted_only_above_tau_and_decides(engine):
    never = RecordingRouter(lambda x: False)
    g = Generation.collect(engine.generate(PROMPT, sampling=SamplingParams(max_new_tokens=N),
                                           routing=RoutingParams("rstitch+", 0.5), router=never))
    assert g.token_ids == run(engine, "slm").token_ids and g.stats.switches_slm_to_llm == 0
    assert never.calls and all(c.entropy > 0.5 for c in never.calls)
    assert len(never.calls) == sum(h > 0.5 for h in g.entropies)
    first = never.calls[0]
    assert first.hidden_state.shape == (engine.slm.hidden_size,)
    assert first.context_length == len(engine.encode(PROMPT)) + first.num_generated

    always = RecordingRouter(lambda x: True)
    g = Generation.collect(engine.generate(PROMPT, sampling=SamplingParams(max_new_tokens=N),
                                           routing=RoutingParams("rstitch+", 0.5), router=always))
    assert g.token_ids == run(engine, "rstitch", tau=0.5).token_ids
    assert max(c.tokens_since_switch for c in always.calls) >= 1


def test_sampled_rstitch_is_reproducible_with_a_seed(engine):
    a = run(engine, "rstitch", temperature=0.8, top_p=0.95, top_k=50, seed=11)
    b = run(engine, "rstitch", temperature=0.8, top_p=0.95, top_k=50, seed=11)
    c = run(engine, "rstitch", temperature=0.8, top_p=0.95, top_k=50, seed=12)
    assert (a.token_ids, a.sources) == (b.token_ids, b.sources)
    assert a.token_ids != c.token_ids
