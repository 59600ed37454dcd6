"""A latency cost model per model, fitted by least squares on profiled forward passes.

R-Stitch+ rewards short trajectories by an *estimated* latency rather than wall time (wall time is
noisy and would make the reward depend on the machine's load). Per model:

    T_prefill(n, kv) = a*n*kv + b*n^2 + c*n + d     (n new tokens on top of kv cached ones)
    T_decode(kv)     = c'*kv + d'                    (one new token)

A trajectory's estimated latency is the sum over its forward passes, each model with its own fit.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch


@dataclass(frozen=True)
class ModelCost:
    """Fitted coefficients of one model (seconds)."""

    prefill: tuple[float, float, float, float]  # a, b, c, d
    decode: tuple[float, float]  # c', d'

    def prefill_seconds(self, n: int, kv: int) -> float:
        a, b, c, d = self.prefill
        return a * n * kv + b * n * n + c * n + d

    def decode_seconds(self, kv: int) -> float:
        c, d = self.decode
        return c * kv + d

    def pass_seconds(self, n: int, kv: int) -> float:
        """A forward pass over n new tokens with kv cached: decode when n == 1, else prefill."""
        return self.decode_seconds(kv) if n == 1 else self.prefill_seconds(n, kv)


@dataclass(frozen=True)
class CostModel:
    """The pair's fits, saved as JSON next to what they were measured on."""

    slm: ModelCost
    llm: ModelCost
    device: str = ""

    def trajectory_seconds(self, passes: Iterable[tuple[str, int, int]]) -> float:
        """Estimated latency of a trajectory given its passes as (model "slm"/"llm", n, kv)."""
        return sum(getattr(self, model).pass_seconds(n, kv) for model, n, kv in passes)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> CostModel:
        raw = json.loads(Path(path).read_text())
        try:
            return cls(ModelCost(tuple(raw["slm"]["prefill"]), tuple(raw["slm"]["decode"])),
                       ModelCost(tuple(raw["llm"]["prefill"]), tuple(raw["llm"]["decode"])), raw.get("device", ""))
        except (KeyError, TypeError) as err:
            raise ValueError(f"{path}: not a cost model file ({err})") from None


def fit(prefills: Sequence[tuple[int, int, float]], decodes: Sequence[tuple[int, float]]) -> ModelCost:
    """Least squares over measured (n, kv, seconds) prefills and (kv, seconds) decodes."""
    if len(prefills) < 4 or len(decodes) < 2:
        raise ValueError(f"need >= 4 prefill and >= 2 decode timings, got {len(prefills)} and {len(decodes)}")
    x = torch.tensor([[n * kv, n * n, n, 1.0] for n, kv, _ in prefills], dtype=torch.float64)
    y = torch.tensor([[t] for _, _, t in prefills], dtype=torch.float64)
    prefill = torch.linalg.lstsq(x, y).solution.flatten().tolist()
    x = torch.tensor([[kv, 1.0] for kv, _ in decodes], dtype=torch.float64)
    y = torch.tensor([[t] for _, t in decodes], dtype=torch.float64)
    decode = torch.linalg.lstsq(x, y).solution.flatten().tolist()
    return ModelCost(tuple(prefill), tuple(decode))


def profile(runner, sizes: Sequence[int] = (2, 8, 32, 128), contexts: Sequence[int] = (8, 32, 128, 512),
            reps: int = 3) -> ModelCost:
    """Time `runner`'s partial prefills (n tokens on kv cached) and decode steps; fit the model.

    Each point is the median of `reps` passes; the cache is cropped back between passes so every
    pass sees the same kv. Points beyond the model's context window are skipped.
    """
    prefills, decodes = [], []
    for kv in contexts:
        if kv + 1 >= runner.max_context:
            continue
        cache = runner.new_cache()
        runner.forward(cache, [(i * 7) % runner.vocab_size for i in range(kv)])
        for n in (1, *(n for n in sizes if kv + n < runner.max_context)):
            tokens = [(i * 11 + 3) % runner.vocab_size for i in range(n)]
            times = []
            for _ in range(reps):
                times.append(runner.forward(cache, tokens).seconds)
                cache.crop(kv)
            seconds = statistics.median(times)
            if n == 1:
                decodes.append((kv, seconds))
            else:
                prefills.append((n, kv, seconds))
    return fit(prefills, decodes)


def profile_pair(engine, reps: int = 3, device: str = "") -> CostModel:
    """Profile both models of an Engine (one warm-up pass each first) and return the pair's fit."""
    for runner in (engine.slm, engine.llm):
        runner.forward(runner.new_cache(), [0, 1])
    return CostModel(profile(engine.slm, reps=reps), profile(engine.llm, reps=reps), device)


# -- Pass costs over new tokens, cached tokens and batch rows (rstitch profile) ----------------------

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
