"""Logits controls (penalties, logit_bias, min_p, min_tokens, ignore_eos) and token logprobs in the core:
applied alike wherever a distribution is sampled or verified, so exact verification still equals the LLM."""

import pytest
import torch

from rstitch_core import Generation, RoutingParams, SamplingParams
from rstitch_core.config import Policy
from rstitch_core.events import FinishReason
from rstitch_core.logits_processors import apply_controls

PROMPT = "def add(a, b):"
CONTROLS = dict(presence_penalty=0.8, frequency_penalty=0.5, repetition_penalty=1.3,
                logit_bias=((5, 3.0), (17, -100.0)))


def run(engine, policy="llm", n=30, tau=0.5, prompt=PROMPT, **sampling) -> Generation:
    return Generation.collect(engine.generate(prompt, sampling=SamplingParams(max_new_tokens=n, **sampling),
                                              routing=RoutingParams(policy=policy, threshold=tau)))


def events(engine, policy="llm", n=30, tau=0.5, **sampling):
    return [e for e in engine.generate(PROMPT, sampling=SamplingParams(max_new_tokens=n, **sampling),
                                       routing=RoutingParams(policy=policy, threshold=tau)) if hasattr(e, "logprob")]


@pytest.mark.parametrize("policy", ["verified", "speculative"])
@pytest.mark.parametrize("tau", [0.2, 0.6])
def test_exact_verification_equals_llm_with_penalties_and_logit_bias(close_pair, policy, tau):
    plain = run(close_pair, "llm")
    llm = run(close_pair, "llm", **CONTROLS)
    got = run(close_pair, policy, tau=tau, **CONTROLS)
    assert llm.token_ids != plain.token_ids  # the controls change the LLM's output here
    assert got.token_ids == llm.token_ids and got.text == llm.text
    assert got.stats.accepted_tokens > 0  # SLM drafts were kept: verification did the work
    assert 17 not in got.token_ids


def test_sampled_exact_verification_follows_the_controlled_llm_distribution(close_pair):
    """Seeded sampling: the same controls make verified emit tokens the LLM gives probability > 0,
    and a token biased to -100 never appears in either."""
    for seed in range(3):
        got = run(close_pair, "verified", n=20, temperature=1.0, seed=seed, min_p=0.05, **CONTROLS)
        assert 17 not in got.token_ids and len(got.token_ids) >= 1


def test_logit_bias_forces_a_token_and_min_tokens_holds_eos_back(engine):
    eos = min(engine.llm.eos_token_ids)
    forced = run(engine, "rstitch", n=6, logit_bias={42: 100.0})
    assert forced.token_ids == [42] * 6
    held = run(engine, "llm", n=10, logit_bias={eos: 100.0}, min_tokens=3)
    assert eos not in held.token_ids[:3] and held.token_ids[3] == eos and held.finish_reason is FinishReason.EOS
    ignored = run(engine, "llm", n=5, logit_bias={eos: 100.0}, ignore_eos=True)
    assert ignored.token_ids == [eos] * 5 and ignored.finish_reason is FinishReason.LENGTH


def test_penalties_follow_vllms_definitions():
    params = SamplingParams(presence_penalty=1.0, frequency_penalty=0.5, repetition_penalty=2.0)
    logits = torch.tensor([[1.0, -1.0, 2.0, 0.5]] * 2)  # [2, V]: rows after history[:3] and [:4]
    history = [0, 2, 2, 1]  # prompt [0], generated [2, 2] then 1
    out = apply_controls(params, logits, history, prompt_len=1, eos_token_ids=())
    # row 0: seen {0, 2}, generated counts {2: 2}
    assert out[0].tolist() == pytest.approx([0.5, -1.0, 2.0 / 2 - 0.5 * 2 - 1.0, 0.5])
    # row 1: token 1 is now generated once and seen
    assert out[1].tolist() == pytest.approx([0.5, -1.0 * 2 - 0.5 - 1.0, 2.0 / 2 - 0.5 * 2 - 1.0, 0.5])
    assert apply_controls(SamplingParams(), logits, history, 1, ()) is logits  # no controls: untouched


@pytest.mark.parametrize("fields, message", [
    ({"presence_penalty": 3}, "presence_penalty must be a number in [-2, 2], got 3"),
    ({"repetition_penalty": 0}, "repetition_penalty must be a number in (0, 2]"),
    ({"min_p": 1.5}, "min_p must be a number in [0, 1], got 1.5"),
    ({"min_tokens": 9, "max_new_tokens": 4}, "min_tokens must be an integer in [0, max_new_tokens = 4], got 9"),
    ({"logit_bias": {"a": 1}}, "logit_bias maps token ids >= 0 to numbers in [-100, 100], got ('a', 1)"),
    ({"logit_bias": {3: 101}}, "got (3, 101)"),
    ({"logprobs": 21}, "logprobs must be an integer in [0, 20], got 21"),
])
def test_bad_controls_are_refused_quoting_the_value(fields, message):
    with pytest.raises(ValueError) as err:
        SamplingParams(**fields)
    assert message in str(err.value)


def _own_logprobs(engine, ids: list[int]) -> torch.Tensor:
    """[len(ids) - 1] the LLM's log-probability of each token after the first, in one plain forward."""
    model = engine.llm.model
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()  # [S, V]
    return torch.log_softmax(logits[:-1], -1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]


@pytest.mark.parametrize("policy", [Policy.LLM, Policy.VERIFIED])
def test_generated_tokens_carry_the_llms_logprob_under_exact_verification(close_pair, policy):
    tokens = events(close_pair, policy.value, n=12, logprobs=3)
    prompt = close_pair.encode(PROMPT)
    want = _own_logprobs(close_pair, prompt + [t.token_id for t in tokens])[len(prompt) - 1:]
    assert [t.logprob for t in tokens] == pytest.approx(want.tolist(), abs=1e-4)
    for t in tokens:  # greedy: the chosen token is the most likely one
        assert len(t.top_logprobs) == 3 and t.top_logprobs[0][0] == t.token_id
        assert t.top_logprobs[0][1] == pytest.approx(t.logprob)
    assert all(t.logprob is None for t in events(close_pair, policy.value, n=3))


def test_trusted_slm_tokens_carry_the_slms_logprob(engine):
    tokens = events(engine, "slm", n=6, logprobs=0)
    assert all(t.source == "slm" and t.top_logprobs == () and t.logprob <= 0 for t in tokens)


def test_prompt_logprobs_are_one_pass_of_the_llm(engine):
    ids = engine.encode(PROMPT)
    got = engine.prompt_logprobs(ids, top=2)
    assert got[0] is None and len(got) == len(ids)
    assert [lp for lp, _ in got[1:]] == pytest.approx(_own_logprobs(engine, ids).tolist(), abs=1e-4)
    assert all(len(top) == 2 and top[0][1] >= lp - 1e-6 for lp, top in got[1:])


def test_prompt_logprobs_on_llamacpp_match_torch(engine, llamacpp_engine):
    ids = engine.encode(PROMPT)
    torch_lp = [lp for lp, _ in engine.prompt_logprobs(ids)[1:]]
    assert [lp for lp, _ in llamacpp_engine.prompt_logprobs(ids)[1:]] == pytest.approx(torch_lp, rel=2e-3)
    got = Generation.collect(llamacpp_engine.generate(PROMPT, sampling=SamplingParams(max_new_tokens=8, **CONTROLS),
                                                      routing=RoutingParams(policy="llm")))
    assert got.token_ids == run(engine, "llm", n=8, **CONTROLS).token_ids
