"""Speculative decoding: lossless under greedy, the LLM's distribution under sampling."""

import pytest
import torch

from rstitch_core import Generation, RoutingParams, SamplingParams
from rstitch_core.policies.acceptance import Draft, accept_prefix
from rstitch_core.sampling import Sampler

PROMPT = "def add(a, b):"


def gen(engine, policy, n=40, k=4, **sampling):
    return Generation.collect(engine.generate(PROMPT, sampling=SamplingParams(max_new_tokens=n, **sampling),
                                              routing=RoutingParams(policy=policy, draft_tokens=k)))


@pytest.mark.parametrize("k", [1, 3, 8])
@pytest.mark.parametrize("pair", ["engine", "close_pair"])
def test_greedy_speculative_equals_llm_greedy(pair, k, request):
    engine = request.getfixturevalue(pair)
    spec, llm = gen(engine, "speculative", k=k), gen(engine, "llm")
    assert spec.token_ids == llm.token_ids and spec.finish_reason == llm.finish_reason
    assert spec.text == llm.text
    assert spec.stats.drafted_tokens > 0
    # Accepted drafts are the SLM's tokens; the rest are the LLM's corrections or bonus tokens.
    assert spec.stats.slm.tokens <= spec.stats.accepted_tokens <= spec.stats.drafted_tokens


def test_close_pair_accepts_some_drafts_and_independent_pair_accepts_none(engine, close_pair):
    close, far = gen(close_pair, "speculative"), gen(engine, "speculative")
    assert 0 < close.stats.accepted_tokens < close.stats.drafted_tokens
    assert close.stats.slm.tokens > 0 and "slm" in close.sources
    assert far.stats.slm.tokens <= 1  # random, unrelated models almost never agree


@pytest.mark.parametrize("policy", ["speculative", "verified"])
def test_caches_hold_only_sequence_tokens_after_rejections(close_pair, policy):
    from core.test_stitch import _assert_cache_matches_fresh_prefill
    from rstitch_core.policies.loop import run_local
    from rstitch_core.sequence import ModelState, Sequence

    e = close_pair
    seq = Sequence.create(e.encode(PROMPT), SamplingParams(max_new_tokens=30), e.tokenizer,
                          e.llm.eos_token_ids, e.max_context)
    slm, llm = ModelState("slm", e.slm, seq.stats.slm), ModelState("llm", e.llm, seq.stats.llm)
    rounds = []

    class CheckBetweenRounds:  # asked for each draft's length, after the previous round's rollback
        def limit(self, lead, max_limit, context_tokens):
            rounds.append(lead)
            for state in (slm, llm):
                if state.cache is not None:
                    _assert_cache_matches_fresh_prefill(state, seq.token_ids, probe=3)
            return max_limit

        def observe(self, drafted, accepted):
            pass

        def plain_steps(self):
            return 0

    routing = RoutingParams(policy=policy, draft_tokens=5, threshold=0.3)
    for _ in run_local(seq, slm, llm, routing, Sampler(SamplingParams()), control=CheckBetweenRounds()):
        pass
    for state in (slm, llm):
        _assert_cache_matches_fresh_prefill(state, seq.token_ids, probe=3)
    assert len(rounds) > 3
    assert seq.stats.accepted_tokens < seq.stats.drafted_tokens  # rollbacks really happened


def test_sampled_speculative_is_reproducible(close_pair):
    a = gen(close_pair, "speculative", temperature=1.0, seed=5)
    b = gen(close_pair, "speculative", temperature=1.0, seed=5)
    assert a.token_ids == b.token_ids and a.sources == b.sources


def test_rejection_sampling_reproduces_the_target_distribution():
    # Hand-built draft q and target p over 5 tokens; the emitted first token must follow p.
    p = torch.tensor([0.05, 0.40, 0.25, 0.20, 0.10])
    q = torch.tensor([0.30, 0.10, 0.40, 0.05, 0.15])
    sampler = Sampler(SamplingParams(temperature=1.0, seed=0))
    n, counts = 20000, torch.zeros(5)
    target = torch.stack([p, p]).log()  # [draft position, bonus position] logits
    for _ in range(n):
        draft = sampler.draw(q)
        accepted, correction = accept_prefix(Draft([draft], [0.0], q[None]), target, sampler)
        counts[draft if accepted else correction] += 1
    freq = counts / n
    assert torch.allclose(freq, p, atol=0.015), freq
    # Acceptance rate of standard speculative sampling is sum(min(p, q)).
    assert torch.minimum(p, q).sum().item() == pytest.approx(0.55)


def test_draft_past_the_llm_vocabulary_is_rejected():
    target = torch.tensor([[0.1, 0.9], [0.5, 0.5]]).log()
    accepted, token = accept_prefix(Draft([2], [0.0], None), target, Sampler(SamplingParams()))
    assert (accepted, token) == (0, 1)
