import torch

from rstitch_core import SamplingParams
from rstitch_core.sampling import Sampler


def test_greedy_is_argmax():
    logits = torch.tensor([0.1, 3.0, 2.9, -1.0])
    assert Sampler(SamplingParams()).sample(logits) == 1


def test_top_k_and_top_p_restrict_the_support():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    top_k = Sampler(SamplingParams(temperature=1.0, top_k=2)).probs(logits)[0]
    assert torch.allclose(top_k, torch.tensor([0.625, 0.375, 0, 0]))
    top_p = Sampler(SamplingParams(temperature=1.0, top_p=0.8)).probs(logits)[0]
    assert torch.allclose(top_p, torch.tensor([0.625, 0.375, 0, 0]))  # 0.5 + 0.3 reaches 0.8
    top_p_all = Sampler(SamplingParams(temperature=1.0, top_p=0.81)).probs(logits)[0]
    assert (top_p_all[:3] > 0).all() and top_p_all[3] == 0


def test_temperature_sharpens():
    logits = torch.tensor([[1.0, 2.0]])
    cold = Sampler(SamplingParams(temperature=0.5)).probs(logits)[0]
    hot = Sampler(SamplingParams(temperature=2.0)).probs(logits)[0]
    assert cold[1] > hot[1] > 0.5


def _draws(seed, n=20):
    logits = torch.linspace(-2, 2, 1000)
    sampler = Sampler(SamplingParams(temperature=1.0, seed=seed))
    return [sampler.sample(logits) for _ in range(n)]


def test_seed_makes_draws_reproducible():
    assert _draws(3) == _draws(3)
    assert _draws(3) != _draws(4)


def test_generator_state_travels_between_samplers():
    a = Sampler(SamplingParams(temperature=1.0, seed=9))
    logits = torch.linspace(-2, 2, 1000)
    first = [a.sample(logits) for _ in range(5)]
    b = Sampler(SamplingParams(temperature=1.0, seed=123))
    b.set_state(a.get_state())  # another worker continues the same request
    assert first + [b.sample(logits) for _ in range(5)] == _draws(9, 10)


def test_draw_never_picks_a_zero_probability_token():
    sampler = Sampler(SamplingParams(temperature=1.0, seed=0))
    probs = torch.tensor([0.0, 0.5, 0.0, 0.5, 0.0])
    assert {sampler.draw(probs) for _ in range(500)} == {1, 3}


def test_an_unseeded_sampler_leaves_the_global_generator_alone():
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    samplers = [Sampler(SamplingParams(temperature=1.0)) for _ in range(4)]
    assert torch.initial_seed() == 1234 and torch.equal(torch.get_rng_state(), state)
    assert len({s.seed for s in samplers}) == 4 and all(0 <= s.seed < 2**63 for s in samplers)
    # Still random per request, and drawn from the request's own generator only.
    samplers[0].sample(torch.zeros(8))
    assert torch.equal(torch.get_rng_state(), state)
