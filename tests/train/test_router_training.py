"""Router training on the tiny pair: labels, the supervised warm start, the RL pieces and a full run."""

from __future__ import annotations

import math

import pytest
import torch

from rstitch_core.drafting.cost import PassCost
from rstitch_core.drafting.profile import CostProfile, ProfileKey
from rstitch_eval.tasks import get_task
from rstitch_train.labels import collect_labels
from rstitch_train.pipeline import train_router
from rstitch_train.router import (
    RLConfig,
    SupervisedConfig,
    clipped_loss,
    group_advantages,
    relative_latency,
    train_rl,
    train_supervised,
)
from tiny_models import make_router

PROMPTS = ["Natalia sold clips", "def add(a, b):", "the quick brown fox", "Step 1: multiply."]
# Made-up costs: every LLM pass costs 3x the SLM's, linear in new tokens.
COST = CostProfile(ProfileKey("slm", "llm", "float32", "cpu", "Test CPU", 2),
                   PassCost((0.01, 0.002, 0.0, 0.0, 0.0, 0.0)), PassCost((0.03, 0.006, 0.0, 0.0, 0.0, 0.0)))


@pytest.fixture(scope="module")
def labels(close_pair):
    """On the close pair (the LLM a perturbed copy of the SLM) the models agree on some positions."""
    router = make_router(close_pair.slm, tau=0.5)
    return collect_labels(close_pair, [close_pair.encode(p) for p in PROMPTS], router, max_new_tokens=32,
                          progress=False)


def test_labels_say_where_the_llm_would_choose_differently(close_pair, labels):
    assert len(labels) > 10 and labels.hidden.shape == (len(labels), close_pair.slm.hidden_size)
    assert set(labels.labels.tolist()) == {0.0, 1.0}  # both kinds occur on random models
    assert (labels.scalars[:, 0] > 0.5).all()  # only positions above tau are labelled


def test_supervised_training_lowers_the_loss_on_a_fixed_labelled_set(close_pair, labels):
    router = make_router(close_pair.slm, tau=0.5, seed=1)
    report = train_supervised(router, labels, SupervisedConfig(epochs=150, validation=0.0), progress=False)
    assert report["train_loss_after"] < 0.7 * report["train_loss_before"]


def test_group_advantages_are_normalized_and_flat_groups_dropped():
    adv = group_advantages([1.0, 0.0, 0.5, 0.5])
    assert sum(adv) == pytest.approx(0.0) and sum(a * a for a in adv) / 4 == pytest.approx(1.0)
    assert adv[0] > 0 > adv[1]
    assert group_advantages([0.7, 0.7, 0.7]) is None


def test_clipped_loss_clips_the_ratio():
    logits, actions = torch.tensor([3.0, -3.0]), torch.tensor([1.0, 0.0])
    old = torch.log(torch.tensor([0.5, 0.5]))  # the new policy is far more sure than the old one
    adv = torch.tensor([1.0, 1.0])
    loss = clipped_loss(logits, actions, old, adv, clip_low=0.2, clip_high=0.28)
    assert float(loss) == pytest.approx(-1.28)  # ratio ~1.9 clipped to 1 + clip_high
    loss = clipped_loss(logits, actions, old, -adv, clip_low=0.2, clip_high=0.28)
    assert float(loss) > 1.5  # a negative advantage is not clipped from above: min keeps the worse value


def test_relative_latency_is_one_for_the_llm_alone_and_lower_with_the_slm():
    prompt, gen = 10, 5
    llm_only = {"llm": [(prompt, 0)] + [(1, prompt + i) for i in range(gen - 1)]}
    assert relative_latency(COST, llm_only, prompt, gen) == pytest.approx(1.0)
    slm_only = {"slm": [(prompt, 0)] + [(1, prompt + i) for i in range(gen - 1)]}
    assert relative_latency(COST, slm_only, prompt, gen) == pytest.approx(1 / 3)


def test_rl_prefers_keeping_when_the_llm_only_adds_latency(engine):
    """All answers count as right, so the reward is 1 - lambda * L_hat: handing over only costs.
    RL must lower P(hand over)."""
    router = make_router(engine.slm, tau=0.5, seed=2)
    prompts = [(engine.encode(p), "") for p in PROMPTS]

    def mean_p():
        from rstitch_train.labels import collect_labels as cl
        data = cl(engine, [p for p, _ in prompts], router, 16, progress=False)
        with torch.no_grad():
            return float(torch.sigmoid(router.net(data.hidden, data.scalars)).mean())

    before = mean_p()
    cfg = RLConfig(steps=4, problems_per_step=4, group=4, updates=4, lr=1e-2, latency_weight=1.0,
                   max_new_tokens=16, seed=0)
    history = train_rl(engine, router, prompts, lambda text, gold: True, COST, cfg, progress=False)
    assert len(history) == 4 and all(math.isfinite(r["relative_latency"]) for r in history)
    assert mean_p() < before - 0.05


def test_rl_config_is_validated():
    with pytest.raises(ValueError, match="group must be >= 2"):
        RLConfig(group=1)
    with pytest.raises(ValueError, match="steps must be an integer >= 0"):
        RLConfig(steps=-1)


def test_train_router_end_to_end_saves_a_router_and_report(engine, tmp_path):
    from rstitch_core.router import LearnedRouter

    task = get_task("arith")
    problems = task.load(0, 4)
    out = tmp_path / "router.safetensors"
    report = train_router(engine, task, problems, "tiny-slm", 0.5, out, COST, 2,
                          SupervisedConfig(epochs=5), RLConfig(steps=1, problems_per_step=2, group=2,
                                                               max_new_tokens=8), progress=False)
    assert out.is_file() and (tmp_path / "router.safetensors.json").is_file()
    assert report["supervised"]["decisions"] > 0 and len(report["rl"]) == 1
    LearnedRouter.load(out, slm=engine.slm)
