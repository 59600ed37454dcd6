"""The verified policy: exact under greedy and sampling, relaxed as documented, caches kept exact."""

from collections import Counter

import pytest
import torch

from rstitch_core import Generation, RoutingParams, SamplingParams
from rstitch_core.policies.acceptance import Draft, accept_prefix
from rstitch_core.sampling import Sampler

PROMPTS = ["Natalia sold clips to 48 of her friends", "def add(a, b):", "The answer is"]


def gen(engine, prompt, policy="verified", n=40, tau=0.3, **kw):
    sampling = {k: kw.pop(k) for k in ("temperature", "top_k", "seed") if k in kw}
    return Generation.collect(engine.generate(prompt, sampling=SamplingParams(max_new_tokens=n, **sampling),
                                              routing=RoutingParams(policy=policy, threshold=tau, **kw)))


@pytest.mark.parametrize("tau", [0.0, 0.2, 0.5, 1.0])
@pytest.mark.parametrize("prompt", PROMPTS)
def test_exact_verified_equals_llm_greedy(close_pair, prompt, tau):
    got, llm = gen(close_pair, prompt, tau=tau), gen(close_pair, prompt, "llm")
    assert got.token_ids == llm.token_ids and got.text == llm.text
    assert got.finish_reason == llm.finish_reason
    s = got.stats
    assert s.slm.tokens == s.accepted_tokens <= s.drafted_tokens  # every SLM token was verified
    assert s.discarded_tokens == 0 and s.rolled_back_tokens == s.drafted_tokens - s.accepted_tokens


@pytest.mark.parametrize("k", [1, 2, 5, 16])
def test_exact_holds_at_every_draft_limit_and_fewer_llm_passes_when_drafts_agree(close_pair, k):
    got, llm = gen(close_pair, PROMPTS[1], draft_tokens=k, tau=0.5), gen(close_pair, PROMPTS[1], "llm")
    assert got.token_ids == llm.token_ids
    assert got.stats.llm.forward_passes <= llm.stats.llm.forward_passes
    assert got.stats.accepted_tokens > 0


class FixedLimit:
    def __init__(self, k):
        self.k, self.seen = k, []

    def limit(self, lead, max_limit, context_tokens):
        return min(self.k, max_limit)

    def observe(self, drafted, accepted):
        self.seen.append((drafted, accepted))

    def plain_steps(self):
        return 0


def test_a_cost_aware_limit_of_zero_drafts_is_plain_llm_decoding(close_pair):
    close_pair.draft_control = lambda routing: FixedLimit(0)
    try:
        got = gen(close_pair, PROMPTS[0])
    finally:
        close_pair.draft_control = None
    llm = gen(close_pair, PROMPTS[0], "llm")
    assert got.token_ids == llm.token_ids and got.stats.slm.forward_passes == 0
    assert got.stats.llm.forward_passes == llm.stats.llm.forward_passes


def test_entropy_ends_drafts_and_the_uncertain_token_is_still_verified(close_pair):
    low, high = gen(close_pair, PROMPTS[0], tau=0.0, draft_tokens=8), gen(close_pair, PROMPTS[0], tau=1.0, draft_tokens=8)
    # tau 0: every draft stops after its first token (all are uncertain); tau 1: drafts run to the limit.
    assert low.stats.drafted_tokens == low.stats.slm.forward_passes
    assert high.stats.drafted_tokens > low.stats.drafted_tokens
    assert low.stats.accepted_tokens > 0  # uncertain drafts are verified, not discarded


def test_lead_moves_with_the_llm_entropy(close_pair):
    g = gen(close_pair, PROMPTS[0], tau=0.5)
    llm_entropies = [h for h, s in zip(g.entropies, g.sources) if s == "llm"]
    assert any(h > 0.5 for h in llm_entropies) and any(h <= 0.5 for h in llm_entropies)
    assert g.stats.switches_slm_to_llm >= 1 and g.stats.switches_llm_to_slm >= 1
    assert abs(g.stats.switches_slm_to_llm - g.stats.switches_llm_to_slm) <= 1


def test_relaxed_at_ratio_one_is_exact_and_at_zero_keeps_every_draft(close_pair):
    exact = gen(close_pair, PROMPTS[0])
    assert gen(close_pair, PROMPTS[0], acceptance="relaxed", relaxed_ratio=1.0).token_ids == exact.token_ids
    loosest = gen(close_pair, PROMPTS[1], acceptance="relaxed", relaxed_ratio=0.0, tau=1.0, draft_tokens=4)
    s = loosest.stats
    assert s.accepted_tokens == s.drafted_tokens > 0 and s.rolled_back_tokens == 0
    # Every round keeps its 4 drafts and adds the LLM's bonus token: 5 tokens per LLM pass.
    assert loosest.sources == (["slm"] * 4 + ["llm"]) * 8


def test_relaxed_rule_accepts_near_ties_and_rejects_below_the_ratio():
    logits = torch.tensor([[2.0, 1.9, -3.0], [0.0, 0.0, 0.0]])  # p(1)/p(0) = e^-0.1 ~ 0.905
    greedy = Sampler(SamplingParams())
    assert accept_prefix(Draft([1], [0.0]), logits, greedy)[0] == 0
    assert accept_prefix(Draft([1], [0.0]), logits, greedy, "relaxed", 0.9) == (1, 0)
    assert accept_prefix(Draft([1], [0.0]), logits, greedy, "relaxed", 0.95) == (0, 0)
    assert accept_prefix(Draft([2], [0.0]), logits, greedy, "relaxed", 0.5) == (0, 0)


def test_sampled_verified_follows_the_llm_distribution(close_pair):
    """First two tokens over many seeds: their joint frequencies match the LLM's own sampling
    distribution (computed exactly from the LLM), within sampling error."""
    e, k, n = close_pair, 4, 1500
    ids = e.encode(PROMPTS[1])
    sampler = Sampler(SamplingParams(temperature=1.0, top_k=k, seed=0))
    first = sampler.probs(e.llm.forward(e.llm.new_cache(), ids).logits)[0]  # [V]
    expected = {}
    for t1 in torch.nonzero(first).flatten().tolist():
        second = sampler.probs(e.llm.forward(e.llm.new_cache(), ids + [t1]).logits)[0]
        for t2 in torch.nonzero(second).flatten().tolist():
            expected[(t1, t2)] = float(first[t1] * second[t2])
    counts = Counter()
    accepted = 0
    for seed in range(n):
        g = gen(e, PROMPTS[1], n=2, tau=0.5, temperature=1.0, top_k=k, seed=seed, draft_tokens=3)
        counts[tuple(g.token_ids)] += 1
        accepted += g.stats.accepted_tokens
    assert accepted > n // 4  # drafts really were accepted, so the test exercises the acceptance rule
    assert set(counts) <= set(expected)
    tv = 0.5 * sum(abs(counts[o] / n - p) for o, p in expected.items())
    assert tv < 0.06, (tv, counts.most_common(5))
