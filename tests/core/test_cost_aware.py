"""Cost-aware draft control in the engine: plain LLM steps where drafts cannot pay, drafts where
they can, and LLM-only output either way."""

import pytest

from rstitch_core import Generation, RoutingParams, SamplingParams
from rstitch_core.costmodel import PassCost
from rstitch_core.policies.cost_aware import PROBE_EVERY, CostAwareControl, cost_aware
from rstitch_core.profile import CostProfile, ProfileKey

KEY = ProfileKey("slm", "llm", "float32", "cpu", "Test CPU", 2)
COMPUTE_BOUND = CostProfile(KEY, PassCost((0.01, 0.09, 0, 0.01, 0, 0)), PassCost((0.03, 0.27, 0, 0.03, 0, 0)))
MEMORY_BOUND = CostProfile(KEY, PassCost((0.004, 1e-5, 2e-4, 0, 0, 0), knee=64),
                           PassCost((0.02, 5e-5, 1e-3, 0, 0, 0), knee=64))
PROMPT = "def add(a, b):"


def gen(engine, profile, policy="verified", **routing):
    engine.draft_control = cost_aware(profile)
    try:
        return Generation.collect(engine.generate(PROMPT, sampling=SamplingParams(max_new_tokens=40),
                                                  routing=RoutingParams(policy=policy, threshold=0.5, **routing)))
    finally:
        engine.draft_control = None


@pytest.mark.parametrize("policy", ["verified", "speculative"])
def test_where_drafts_cannot_pay_every_round_is_a_plain_llm_step(close_pair, policy):
    got, llm = gen(close_pair, COMPUTE_BOUND, policy), gen(close_pair, None, "llm")
    assert got.token_ids == llm.token_ids
    assert got.stats.slm.forward_passes == 0 and got.stats.drafted_tokens == 0
    assert got.stats.undrafted_rounds == got.stats.llm.forward_passes == llm.stats.llm.forward_passes


def test_where_drafts_pay_they_are_drafted_and_output_stays_exact(close_pair):
    got, llm = gen(close_pair, MEMORY_BOUND), gen(close_pair, None, "llm")
    assert got.token_ids == llm.token_ids
    assert got.stats.drafted_tokens > 0 and got.stats.llm.forward_passes < llm.stats.llm.forward_passes


def test_a_pinned_draft_length_is_kept_even_with_a_profile(close_pair):
    got = gen(close_pair, COMPUTE_BOUND, draft_tokens=3)
    assert got.stats.drafted_tokens > 0 and got.stats.undrafted_rounds == 0


def test_drafts_shrink_with_a_falling_acceptance_and_a_growing_batch_and_probes_recover():
    control = CostAwareControl(MEMORY_BOUND)
    first = control.limit("slm", 8, 100)
    for _ in range(30):
        control.observe(first, 0)
    assert first > 0 and control.limit("slm", 8, 100) < first
    busy = CostAwareControl(MEMORY_BOUND, batch_rows=lambda: 256)
    assert busy.limit("slm", 8, 100) < first
    # At zero acceptance drafts never pay, but every PROBE_EVERY-th round drafts one token to re-measure.
    chosen = [control.limit("slm", 8, 100) for _ in range(2 * PROBE_EVERY)]
    assert chosen.count(1) == 2 and set(chosen) <= {0, 1}
    never = CostAwareControl(COMPUTE_BOUND)
    assert [never.limit("slm", 8, 100) for _ in range(2 * PROBE_EVERY)] == [0] * (2 * PROBE_EVERY)
