"""The one cost model: the time of a forward pass over b rows, each feeding n new tokens on kv cached.

Everything that prices a trajectory or a draft prices it with PassCost.seconds: the cost-aware
draft control (control.py, windows.py), R-Stitch+ training's latency reward (CostProfile.
trajectory_seconds) and `rstitch eval report --cost-profile`. The coefficients are fitted by
fit_pass_cost to passes timed on the machine (profiling.py) and saved in a CostProfile (profile.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

PASS_FEATURES = ("fixed", "tokens", "knee", "logits", "attention", "kv_read")


@dataclass(frozen=True)
class PassCost:
    """Time of one forward pass over b rows, each feeding n new tokens on top of kv cached ones:

        T = d + c*T_tok + h*max(0, T_tok - knee) + g*L + a*T_tok*(kv + (n+1)/2) + e*b*kv

    with T_tok = b*n tokens fed and L = b*logits rows through the LM head. d is the per-pass cost
    (weights read, kernel launches), c the per-token cost below the knee where passes turn
    compute-bound (h the extra slope above it), a the attention over each token's context, e the
    reading of each row's cache. Coefficients are seconds and never negative.
    """

    coef: tuple[float, float, float, float, float, float]  # d, c, h, g, a, e (PASS_FEATURES order)
    knee: float = 0.0  # in tokens per pass; 0 when the fit found none

    def seconds(self, n: float, kv: float = 0, b: int = 1, logits: float = 1) -> float:
        """Predicted seconds of a pass: b rows x n new tokens on kv cached, `logits` rows each."""
        return float(sum(c * f for c, f in zip(self.coef, pass_features(n, kv, b, logits, self.knee))))

    def decode_seconds(self, kv: float, b: int = 1) -> float:
        return self.seconds(1, kv, b, 1)

    def verify_seconds(self, n: int, kv: float, b: int = 1) -> float:
        """A pass over n tokens that needs the logits of all of them (draft verification)."""
        return self.seconds(n, kv, b, n)


def pass_features(n: float, kv: float, b: int, logits: float, knee: float) -> tuple[float, ...]:
    tokens = b * n
    return (1.0, tokens, max(0.0, tokens - knee) if knee > 0 else 0.0, b * logits,
            tokens * (kv + (n + 1) / 2), b * kv)


def fit_pass_cost(points: Sequence[tuple[int, int, int, int, float]]) -> PassCost:
    """Fit PassCost to measured (n, kv, b, logits, seconds) points.

    Least squares on relative error (each row divided by its time, so cheap decode steps weigh as
    much as long prefills), with every coefficient kept >= 0 by dropping the most negative one and
    refitting. The knee is tried at every measured token count and kept only where it lowers the
    error by more than 10%, so noise alone does not bend the line.
    """
    if len(points) < len(PASS_FEATURES) + 1:
        raise ValueError(f"need >= {len(PASS_FEATURES) + 1} timed passes to fit, got {len(points)}")
    if any(p[-1] <= 0 for p in points):
        raise ValueError(f"pass times must be positive, got {[p[-1] for p in points if p[-1] <= 0]}")
    best = _fit_nonneg(points, 0.0)
    for knee in sorted({float(b * n) for n, _, b, _, _ in points})[1:-1]:
        candidate = _fit_nonneg(points, knee)
        if candidate[1] < 0.9 * best[1]:
            best = candidate
    return best[0]


def _fit_nonneg(points, knee: float) -> tuple[PassCost, float]:
    """(fit, sum of squared relative errors) with non-negative coefficients (a small active set)."""
    x = torch.tensor([pass_features(n, kv, b, lg, knee) for n, kv, b, lg, _ in points], dtype=torch.float64)
    t = torch.tensor([s for *_, s in points], dtype=torch.float64)
    x, y = x / t[:, None], torch.ones_like(t)
    scale = x.abs().amax(dim=0).clamp(min=1e-30)  # columns span many decades: solve in unit scale
    active = [i for i in range(x.shape[1]) if x[:, i].abs().sum() > 0]
    while True:
        sol = torch.linalg.lstsq(x[:, active] / scale[active], y[:, None]).solution.flatten() / scale[active]
        if bool((sol >= 0).all()):
            break
        active.pop(int(sol.argmin()))
    coef = [0.0] * x.shape[1]
    for i, c in zip(active, sol.tolist()):
        coef[i] = c
    residual = float(((x @ torch.tensor(coef, dtype=torch.float64)) - y).square().sum())
    return PassCost(tuple(coef), knee if coef[2] > 0 else 0.0), residual
