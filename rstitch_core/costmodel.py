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
