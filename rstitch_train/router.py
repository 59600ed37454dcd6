"""Training the R-Stitch+ router: a supervised warm start, then RL with the paper's reward.

RL follows the paper's recipe at small scale: for each problem, a group of rollouts in which the
router's decisions are sampled (the base models decode greedily and stay frozen); reward
R = r_acc - lambda * r_acc * L_hat, so latency only counts when the answer is right; advantages are
normalized within each group, groups whose rewards are all equal are dropped (they carry no
signal), and the policy is updated with a clipped ratio objective averaged over decisions
(asymmetric clip as in DAPO). L_hat is the cost model's latency estimate of the trajectory divided
by its estimate for the LLM writing the same tokens alone, so lambda is unitless and the reward
does not depend on how busy the machine is.
"""

from __future__ import annotations

import math
import random
import sys
from dataclasses import dataclass

import torch
from torch.nn import functional as F
from tqdm import tqdm

from rstitch_core import Policy, RoutingParams, SamplingParams
from rstitch_core.drafting.profile import CostProfile
from rstitch_core.router import LearnedRouter
from rstitch_core.router.switch import RouterInput
from rstitch_train.labels import Decisions


@dataclass(frozen=True)
class SupervisedConfig:
    epochs: int = 200
    lr: float = 3e-3
    weight_decay: float = 1e-2
    validation: float = 0.2  # share of decisions held out (early stopping, decision threshold)
    # Keeping the SLM's token where the LLM disagrees can ruin the answer, handing over needlessly
    # only costs time: the decision threshold is set so that this share of the held-out
    # "hand over" labels is caught.
    recall: float = 0.9
    seed: int = 0


def supervised_loss(router: LearnedRouter, data: Decisions, pos_weight: float = 1.0) -> float:
    with torch.no_grad():
        logits = router.net(data.hidden, data.scalars)
        return float(F.binary_cross_entropy_with_logits(logits, data.labels, pos_weight=torch.tensor(pos_weight)))


def train_supervised(router: LearnedRouter, data: Decisions, cfg: SupervisedConfig = SupervisedConfig(),
                     progress: bool = True) -> dict:
    """Full-batch weighted BCE on the labels (positives weighted up to balance the classes)."""
    g = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(len(data), generator=g)
    n_val = int(len(data) * cfg.validation) if len(data) >= 10 else 0
    val, train = order[:n_val], order[n_val:]
    tr, va = (Decisions(data.hidden[i], data.scalars[i], data.labels[i]) for i in (train, val))
    positives = float(tr.labels.sum())
    pos_weight = (len(tr) - positives) / positives if positives else 1.0
    report = {"decisions": len(data), "handover_labels": float(data.labels.mean()),
              "train_loss_before": supervised_loss(router, tr, pos_weight)}
    if n_val:
        report["val_loss_before"] = supervised_loss(router, va, pos_weight)
    torch.manual_seed(cfg.seed)
    router.net.train()
    opt = torch.optim.AdamW(router.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    # The labels are few and noisy: keep the weights of the epoch with the lowest validation loss.
    best, best_state, best_epoch = math.inf, None, cfg.epochs
    for epoch in tqdm(range(cfg.epochs), desc="supervised", disable=not progress, file=sys.stderr,
                      dynamic_ncols=True):
        loss = F.binary_cross_entropy_with_logits(router.net(tr.hidden, tr.scalars), tr.labels,
                                                  pos_weight=torch.tensor(pos_weight))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if n_val:
            val_loss = supervised_loss(router, va, pos_weight)
            if val_loss < best:
                best, best_epoch = val_loss, epoch + 1
                best_state = {k: v.detach().clone() for k, v in router.net.state_dict().items()}
    if best_state is not None:
        router.net.load_state_dict(best_state)
    router.net.eval()
    report["epochs_kept"] = best_epoch
    report["train_loss_after"] = supervised_loss(router, tr, pos_weight)
    if n_val:
        report["val_loss_after"] = supervised_loss(router, va, pos_weight)
        with torch.no_grad():
            p = torch.sigmoid(router.net(va.hidden, va.scalars))
        positives = p[va.labels.bool()]
        if len(positives):
            # the largest threshold that still catches `recall` of the positives
            threshold = float(torch.quantile(positives, 1 - cfg.recall).clamp(1e-4, 1 - 1e-4))
            # Folded into the output bias, so P = 0.5 is the boundary: the sampled policy of the
            # RL stage then explores around the same decisions the deployed router makes.
            with torch.no_grad():
                router.net.mlp[-1].bias -= math.log(threshold / (1 - threshold))
            report["decision_threshold"] = threshold
        predicted = p >= report.get("decision_threshold", 0.5)
        report["val_accuracy"] = float((predicted == va.labels.bool()).float().mean())
        report["val_recall"] = float(predicted[va.labels.bool()].float().mean()) if len(positives) else None
        report["val_handover_rate"] = float(predicted.float().mean())
    return report


@dataclass(frozen=True)
class RLConfig:
    steps: int = 20
    problems_per_step: int = 8
    group: int = 8  # rollouts per problem
    updates: int = 4  # optimizer steps per batch of rollouts
    lr: float = 1e-3
    clip_low: float = 0.2
    clip_high: float = 0.28
    latency_weight: float = 0.5  # lambda, on the unitless latency estimate L_hat
    std_floor: float = 0.1  # see group_advantages
    max_new_tokens: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"steps must be an integer >= 0 (0 = no RL), got {self.steps!r}")
        for name in ("problems_per_step", "group", "updates", "max_new_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.group < 2:
            raise ValueError(f"group must be >= 2 (advantages are relative to the group), got {self.group}")
        if self.latency_weight < 0:
            raise ValueError(f"latency_weight (lambda) must be >= 0, got {self.latency_weight}")


class SamplingRouter:
    """The router as a stochastic policy: samples each decision and records it for the update."""

    def __init__(self, router: LearnedRouter, generator: torch.Generator):
        self.router, self.generator = router, generator
        self.hidden: list[torch.Tensor] = []
        self.scalars: list[torch.Tensor] = []
        self.actions: list[float] = []
        self.logps: list[float] = []

    @torch.no_grad()
    def __call__(self, x: RouterInput) -> bool:
        h, s = self.router.inputs(x)
        p = float(torch.sigmoid(self.router.net(h[None], s[None]))[0])
        action = bool(torch.rand((), generator=self.generator) < p)
        self.hidden.append(h.cpu())
        self.scalars.append(s.cpu())
        self.actions.append(float(action))
        self.logps.append(math.log(max(p if action else 1 - p, 1e-12)))
        return action


def relative_latency(cost: CostProfile, passes: dict, prompt_len: int, generated: int) -> float:
    """L_hat: the trajectory's estimated latency over the estimate for the LLM alone on its tokens."""
    spent = cost.trajectory_seconds((m, n, kv) for m in ("slm", "llm") for n, kv in passes.get(m, []))
    llm_only = cost.llm.seconds(prompt_len, 0) + sum(
        cost.llm.decode_seconds(prompt_len + i) for i in range(max(generated - 1, 0)))
    return spent / llm_only if llm_only > 0 else 0.0


def group_advantages(rewards: list[float], std_floor: float = 0.0) -> list[float] | None:
    """(R - mean) / max(std, std_floor) within one group; None when all rewards are equal.

    The floor matters here: in a group where every answer is right, rewards differ only by a few
    hundredths of latency, and plain normalization would blow those up into the same +-1
    advantages as a group split between right and wrong answers (and drown accuracy in latency).
    """
    mean = sum(rewards) / len(rewards)
    std = (sum((r - mean) ** 2 for r in rewards) / len(rewards)) ** 0.5
    if std < 1e-8:
        return None
    return [(r - mean) / max(std, std_floor) for r in rewards]


def clipped_loss(logits: torch.Tensor, actions: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor,
                 clip_low: float, clip_high: float) -> torch.Tensor:
    """Decision-level clipped surrogate: logits/actions/old_logp/adv all [N]."""
    logp = -F.binary_cross_entropy_with_logits(logits, actions, reduction="none")
    ratio = torch.exp(logp - old_logp)
    return -torch.min(ratio * adv, ratio.clamp(1 - clip_low, 1 + clip_high) * adv).mean()


def train_rl(engine, router: LearnedRouter, problems: list, grade, cost: CostProfile, cfg: RLConfig,
             progress: bool = True) -> list[dict]:
    """Fine-tune `router` in place; `problems` are (prompt ids, gold) pairs and `grade(text, gold)`
    says whether a generation is right. Returns one dict of figures per step."""
    rng = random.Random(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(router.net.parameters(), lr=cfg.lr)
    routing = RoutingParams(policy=Policy.RSTITCH_PLUS, threshold=router.config.tau)
    sampling = SamplingParams(max_new_tokens=cfg.max_new_tokens)
    history = []
    bar = tqdm(range(cfg.steps), desc="rl", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    for step in bar:
        batch = rng.sample(problems, min(cfg.problems_per_step, len(problems)))
        hidden, scalars, actions, old_logp, adv = [], [], [], [], []
        accs, lats, shares = [], [], []
        for ids, gold in batch:
            rollouts, rewards = [], []
            for _ in range(cfg.group):
                policy = SamplingRouter(router, gen)
                g, passes = engine.rollout(ids, sampling, routing, policy)
                acc = float(grade(g.text, gold))
                lat = relative_latency(cost, passes, len(ids), len(g.token_ids))
                rewards.append(acc - cfg.latency_weight * acc * lat)
                rollouts.append(policy)
                accs.append(acc)
                lats.append(lat)
                shares.append(g.stats.llm_token_share)
            advantages = group_advantages(rewards, cfg.std_floor)
            if advantages is None:
                continue
            for policy, a in zip(rollouts, advantages):
                hidden += policy.hidden
                scalars += policy.scalars
                actions += policy.actions
                old_logp += policy.logps
                adv += [a] * len(policy.actions)
        row = {"step": step, "accuracy": sum(accs) / len(accs), "relative_latency": sum(lats) / len(lats),
               "llm_token_share": sum(shares) / len(shares), "decisions": len(actions)}
        if actions:
            h, s = torch.stack(hidden), torch.stack(scalars)
            a, lp, ad = torch.tensor(actions), torch.tensor(old_logp), torch.tensor(adv)
            router.net.train()
            for _ in range(cfg.updates):
                loss = clipped_loss(router.net(h, s), a, lp, ad, cfg.clip_low, cfg.clip_high)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            router.net.eval()
            row["loss"] = float(loss.detach())
        history.append(row)
        bar.set_postfix(acc=f"{row['accuracy']:.2f}", lat=f"{row['relative_latency']:.2f}",
                        llm=f"{row['llm_token_share']:.2f}", refresh=False)
    return history
