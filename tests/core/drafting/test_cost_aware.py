"""Cost-aware draft control in the engine: plain LLM steps where drafts cannot pay, drafts where
they can, and LLM-only output either way."""

import pytest

from rstitch_core import Generation, RoutingParams, SamplingParams
from rstitch_core.drafting.control import choose_draft_limit
from rstitch_core.drafting.cost import PassCost
from rstitch_core.drafting.cost_aware import PROBE_EVERY, PROBE_RATE, WINDOW_PLAIN_TOKENS, CostAwareControl, cost_aware
from rstitch_core.drafting.profile import CostProfile, ProfileKey

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


def started(control: CostAwareControl) -> CostAwareControl:
    """The control after its first round, which is always plain: one LLM token, as LLM-only starts."""
    assert control.limit("slm", 8, 100) == 0 and control.plain_steps() == 0
    return control


def test_drafts_shrink_with_a_falling_acceptance_and_a_growing_batch_and_probes_recover():
    control = started(CostAwareControl(MEMORY_BOUND))
    first = control.limit("slm", 8, 100)
    for _ in range(30):
        control.observe(first, 0)
    assert first > 0 and control.limit("slm", 8, 100) < first
    busy = started(CostAwareControl(MEMORY_BOUND, batch_rows=lambda: 256))
    assert busy.limit("slm", 8, 100) < first
    # At zero acceptance drafts never pay, but every PROBE_EVERY-th round probes with the drafts
    # that would pay at PROBE_RATE, to re-measure.
    chosen = [control.limit("slm", 8, 100) for _ in range(2 * PROBE_EVERY + 1)]
    probe = choose_draft_limit(MEMORY_BOUND, PROBE_RATE, 1, 100, 8, min_gain=0.0)
    assert probe > 1 and sorted(set(chosen)) == [0, probe] and chosen.count(probe) == 2
    never = started(CostAwareControl(COMPUTE_BOUND))
    assert [never.limit("slm", 8, 100) for _ in range(2 * PROBE_EVERY)] == [0] * (2 * PROBE_EVERY)


def test_no_probes_where_drafts_would_pay_only_at_an_acceptance_near_one():
    """The default pair's 4-bit passes in llama.cpp on a 2-core Xeon (its fitted profile): a 9-token
    verify pass costs 2.7 decode steps, so drafts pay at a = 1 but not at PROBE_RATE."""
    from rstitch_core.drafting.control import drafting_can_pay

    llama = CostProfile(ProfileKey("slm", "llm", "gguf", "cpu", "Test CPU", 2),
                        PassCost((0.0238, 0.00515, 0, 0.00214, 1.46e-05, 7.0e-06)),
                        PassCost((0.0579, 0.01047, 0, 0.00299, 8.65e-06, 0)))
    assert drafting_can_pay(llama, 1, 100, 8) and choose_draft_limit(llama, PROBE_RATE, 1, 100, 8) == 0
    control = started(CostAwareControl(llama))
    assert [control.limit("slm", 8, 100) for _ in range(3 * PROBE_EVERY)] == [0] * (3 * PROBE_EVERY)


def test_rounds_without_drafts_decode_alone_until_the_next_probe(close_pair):
    """One VerifyOp covers many plain tokens: served, that is one worker call, not one per token
    (after the first round's one token)."""
    from rstitch_core.models.step_engine import run_inline
    from rstitch_core.policies.loop import Handoff, Steps, decode
    from rstitch_core.policies.phases import VerifyOp, run_phase
    from rstitch_core.sampling import Sampler
    from rstitch_core.sequence import ModelState, Sequence

    e = close_pair
    seq = Sequence.create(e.encode(PROMPT), SamplingParams(max_new_tokens=40), e.tokenizer,
                          e.llm.eos_token_ids, e.max_context)
    states = {"slm": ModelState("slm", e.slm, seq.stats.slm), "llm": ModelState("llm", e.llm, seq.stats.llm)}
    control = CostAwareControl(COMPUTE_BOUND)
    steps, ops = Steps(decode(seq, RoutingParams(policy="verified", threshold=0.5), control)), []
    for step in steps:
        if isinstance(step, Handoff):  # the lead still follows the LLM's entropy
            continue
        assert isinstance(step, VerifyOp), "drafts cannot pay on a compute-bound profile"
        ops.append(step)
        phase = run_inline(run_phase(step, seq, states["llm"], Sampler(seq.sampling)), e.llm)
        while steps.result is None:
            try:
                next(phase)
            except StopIteration as stop:
                steps.result = stop.value
    # Drafts cannot pay here even at PROBE_RATE: no probe can be due, so each call decodes
    # WINDOW_PLAIN_TOKENS (one round trip per 32 tokens served, not per PROBE_EVERY).
    assert seq.num_generated == 40 and len(ops) == 1 + -(-39 // WINDOW_PLAIN_TOKENS)
    assert ops[0].plain_steps == 0 and all(op.plain_steps == WINDOW_PLAIN_TOKENS - 1 for op in ops[1:-1])
    assert seq.stats.undrafted_rounds == seq.stats.llm.forward_passes == 40


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def served(windows, clock, load, draft_tps, plain_tps, seconds):
    """`load` requests' rounds, as a front end would drive their controls, for `seconds`: tokens
    stream at the whole front end's rate of the mode each round ran in."""
    controls = [CostAwareControl(MEMORY_BOUND, windows=windows, load=lambda: load) for _ in range(load)]
    tokens, rounds = [100] * load, []  # rounds: (drafted?, tokens emitted), in order
    while clock.now < seconds:
        for i, control in enumerate(controls):
            k = control.limit("slm", 8, tokens[i])
            emitted = 1 + k if k else 1 + control.plain_steps()
            tokens[i] += emitted
            for _ in range(emitted):  # they stream out as the round runs
                clock.now += 1 / (draft_tps if k else plain_tps)
                windows.emitted(1)
            rounds.append((k > 0, emitted))
    return rounds


def drafted_share(rounds) -> float:
    """The share of tokens emitted by rounds that drafted."""
    return sum(n for drafted, n in rounds if drafted) / sum(n for _, n in rounds)


def test_windows_keep_plain_decoding_where_drafting_streams_less():
    from rstitch_core.drafting.windows import DraftWindows

    clock = FakeClock()
    windows = DraftWindows(window_s=4.0, clock=clock)
    rounds = served(windows, clock, 8, draft_tps=19.0, plain_tps=27.0, seconds=240)
    assert windows.rate(8, "draft") == pytest.approx(19.0, rel=0.2)
    assert windows.rate(8, "plain") == pytest.approx(27.0, rel=0.2)
    assert drafted_share(rounds[len(rounds) // 2:]) < 0.2  # the profile's drafts lost: plain, but for rare measuring windows


def test_windows_keep_drafting_where_it_streams_more():
    from rstitch_core.drafting.windows import DraftWindows

    clock = FakeClock()
    windows = DraftWindows(window_s=4.0, clock=clock)
    rounds = served(windows, clock, 2, draft_tps=5.4, plain_tps=4.3, seconds=400)
    assert windows.rate(2, "draft") > windows.rate(2, "plain")
    # Drafting, but for measuring windows of plain decoding, whose calls are 32 tokens per request long.
    assert drafted_share(rounds[len(rounds) // 2:]) > 0.7


def test_a_window_spanning_a_load_change_or_idle_time_is_no_sample():
    from rstitch_core.drafting.windows import DraftWindows

    clock = FakeClock()
    windows = DraftWindows(window_s=1.0, clock=clock)
    assert windows.mode(2) == "plain"  # unmeasured: plain decoding is measured first
    windows.emitted(10)
    clock.now = 0.5
    assert windows.mode(4) == "plain"  # the load changed: that window is void, a new one starts
    assert windows.rate(2, "plain") is None
    clock.now = 10.0  # idle far past the window: void as well
    windows.mode(4)
    assert windows.rate(4, "plain") is None
    with pytest.raises(ValueError, match="window_s > 0"):
        DraftWindows(window_s=0)


def test_a_request_alone_is_left_to_the_profile():
    from rstitch_core.drafting.windows import DraftWindows

    clock = FakeClock()
    windows = DraftWindows(window_s=4.0, clock=clock)
    # Plain decoding streams more, and yet: one request has no batching effect for windows to see.
    rounds = served(windows, clock, 1, draft_tps=3.0, plain_tps=5.0, seconds=100)
    assert windows.current is None and windows.rate(1, "plain") is None
    assert rounds[0] == (False, 1)  # the first round: the LLM prefills the prompt and writes a token
    assert drafted_share(rounds[1:]) == 1.0  # then the profile's choice on MEMORY_BOUND: drafts pay


def windows_modes(windows, clock, load, count):
    """The modes of `count` windows at `load`, one round each, tokens streaming throughout."""
    modes = []
    for _ in range(count):
        modes.append(windows.mode(load))
        clock.now += 4.0
        windows.emitted(150)
        clock.now += 0.1
    return modes


def test_a_higher_load_samples_drafting_first_only_where_a_lower_load_measured_it_faster():
    from rstitch_core.drafting.windows import DraftWindows

    # No evidence below (the loads 2-3 never seen): 16 streams run plainly until the exploring turn.
    clock = FakeClock()
    windows = DraftWindows(window_s=4.0, clock=clock)
    modes = windows_modes(windows, clock, 16, 12)
    assert modes[:9] == ["plain"] * 9 and "draft" in modes  # ... which then measures drafting
    assert windows.rate(16, "draft") is not None
    # Drafting lost at 2 streams (the lowest windowed load, sampled both ways at once): same at 16.
    clock = FakeClock()
    windows = DraftWindows(window_s=4.0, clock=clock)
    served(windows, clock, 2, draft_tps=5.0, plain_tps=7.0, seconds=60)
    assert windows.rate(2, "draft") < windows.rate(2, "plain")
    assert windows_modes(windows, clock, 16, 9) == ["plain"] * 9
    # Drafting won at 2 streams: 16 streams sample it right after plain decoding.
    clock = FakeClock()
    windows = DraftWindows(window_s=4.0, clock=clock)
    served(windows, clock, 2, draft_tps=9.0, plain_tps=7.0, seconds=60)
    assert windows_modes(windows, clock, 16, 2) == ["plain", "draft"]


def test_exploring_windows_grow_rarer_while_the_verdict_stands_and_recover_when_it_turns():
    from rstitch_core.drafting.windows import DraftWindows

    clock = FakeClock()
    windows = DraftWindows(window_s=4.0, clock=clock)
    rounds = served(windows, clock, 8, draft_tps=19.0, plain_tps=27.0, seconds=2000)
    bucket = windows.bucket(8)
    assert windows.explored[bucket][1] == windows.max_explore_every
    assert drafted_share(rounds[len(rounds) // 2:]) < 0.03  # an interval of 8 windows gave ~0.08
    # Drafting becomes the faster mode: the next exploring window sees it and the verdict turns.
    rounds = served(windows, clock, 8, draft_tps=40.0, plain_tps=27.0, seconds=clock.now + 1000)
    assert windows.best[bucket] == "draft" and drafted_share(rounds[len(rounds) // 2:]) > 0.7
