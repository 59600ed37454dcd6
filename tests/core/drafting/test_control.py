"""The draft-limit chooser on hand-built profiles, and the running acceptance estimate."""

import pytest

from rstitch_core.drafting.control import (
    AcceptanceEstimate,
    choose_draft_limit,
    drafting_can_pay,
    expected_tokens,
    tokens_per_second,
)
from rstitch_core.drafting.cost import PassCost
from rstitch_core.drafting.profile import CostProfile, ProfileKey

KEY = ProfileKey("qwen2-small", "qwen2-large", "bfloat16", "cpu", "Test CPU", 2)

# Compute-bound CPU (AVX2, emulated bf16): a pass costs about its token count in steps.
CPU = CostProfile(KEY, PassCost((0.01, 0.09, 0, 0.01, 0, 0)), PassCost((0.03, 0.27, 0, 0.03, 0, 0)))
# GPU: a pass is one weights read until ~64 tokens; the SLM's step is a fifth of the LLM's.
GPU = CostProfile(KEY, PassCost((0.004, 1e-5, 2e-4, 0, 0, 0), knee=64), PassCost((0.02, 5e-5, 1e-3, 0, 0, 0), knee=64))


def test_expected_tokens_is_the_truncated_geometric_sum():
    assert expected_tokens(1.0, 4) == 5
    assert expected_tokens(0.0, 4) == 1
    assert expected_tokens(0.5, 2) == pytest.approx(1 + 0.5 + 0.25)
    assert expected_tokens(0.8, 0) == 1


@pytest.mark.parametrize("a", [0.3, 0.8, 0.95, 1.0])
def test_no_drafts_where_a_k_token_pass_costs_k_steps(a):
    assert choose_draft_limit(CPU, a, batch_rows=1, context_tokens=300, max_limit=16) == 0
    assert not drafting_can_pay(CPU, 1, 300, 16)


def test_drafts_where_a_k_token_pass_costs_about_one_step():
    ks = [choose_draft_limit(GPU, a, batch_rows=1, context_tokens=300, max_limit=16) for a in (0.6, 0.7, 0.9, 0.97)]
    assert all(k > 0 for k in ks) and ks == sorted(ks) and ks[-1] > ks[0]
    # At a = 0.5 the best draft is projected < MIN_GAIN better than plain decoding: not worth the risk.
    assert choose_draft_limit(GPU, 0.5, 1, 300, 16) == 0
    assert choose_draft_limit(GPU, 0.0, 1, 300, 16) == 0  # nothing is ever accepted
    assert drafting_can_pay(GPU, 1, 300, 16)


def test_drafting_shrinks_as_the_batch_grows_until_passes_are_no_longer_free():
    ks = [choose_draft_limit(GPU, 0.8, batch_rows=b, context_tokens=300, max_limit=16) for b in (1, 4, 16, 64, 256)]
    assert ks == sorted(ks, reverse=True) and ks[0] > ks[-1] and ks[-1] == 0


@pytest.mark.parametrize("profile, a, b", [(GPU, 0.75, 1), (GPU, 0.9, 8), (CPU, 0.9, 1)])
def test_the_choice_maximises_expected_tokens_per_second(profile, a, b):
    k = choose_draft_limit(profile, a, b, 200, 12, min_gain=0.0)
    rates = [tokens_per_second(profile, a, j, b, 200) for j in range(13)]
    assert rates[k] == max(rates)


def test_a_small_gain_does_not_buy_drafting():
    # Drafting here gains a few percent at best: below the default margin, above a zero one.
    almost = CostProfile(KEY, PassCost((0.01, 0.0, 0, 0, 0, 0)), PassCost((0.05, 0.0, 0, 0.025, 0, 0)))
    best = max(tokens_per_second(almost, 0.5, k) for k in range(1, 9)) / tokens_per_second(almost, 0.5, 0)
    assert 1.0 < best < 1.03
    assert choose_draft_limit(almost, 0.5, 1, 0, 8) == 0
    assert choose_draft_limit(almost, 0.5, 1, 0, 8, min_gain=0.0) > 0


@pytest.mark.parametrize("args, message", [
    ((1.5, 1, 0, 4), "acceptance_rate must be in"), ((0.5, 0, 0, 4), "batch_rows >= 1"),
    ((0.5, 1, -1, 4), "context_tokens >= 0"), ((0.5, 1, 0, -1), "max_limit >= 0")])
def test_bad_arguments_are_refused(args, message):
    with pytest.raises(ValueError, match=message):
        choose_draft_limit(GPU, *args)
    assert choose_draft_limit(GPU, 0.9, 1, 0, 0) == 0


def test_acceptance_estimate_starts_at_the_prior_and_follows_the_rounds():
    est = AcceptanceEstimate.with_prior(0.7, weight=8, decay=0.9)
    assert est.rate == pytest.approx(0.7) and AcceptanceEstimate().rate == pytest.approx(0.9)
    assert est.observe(0, 0) is est
    high = est
    for _ in range(30):
        high = high.observe(drafted=4, accepted=4)
    assert high.rate > 0.99  # the prior fades with the rounds
    low = high
    for _ in range(30):
        low = low.observe(drafted=4, accepted=0)  # one examined, rejected draft per round
    assert low.rate < 0.2
    one = est.observe(drafted=4, accepted=2)  # 2 accepted of 3 examined
    assert one.rate == pytest.approx((2 + 0.9 * 0.7 * 8) / (3 + 0.9 * 8))
    with pytest.raises(ValueError, match="accepted=5, drafted=4"):
        est.observe(4, 5)
    with pytest.raises(ValueError, match="decay in"):
        AcceptanceEstimate(decay=0.0)
    with pytest.raises(ValueError, match="rate in"):
        AcceptanceEstimate.with_prior(1.5)
