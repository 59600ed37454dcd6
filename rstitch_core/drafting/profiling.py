"""Time a model pair's forward passes over a small grid and fit their CostProfile.

Works on any backend (models/backend.py). The cached context comes from the backend's
filled_cache(): torch fabricates zero keys and values of the wanted length (a pass's time depends
on the cache's shape, not its contents); llama.cpp prefills them. Single-row passes go through
forward() (the engine's path); b-row passes through the backend's BatchPool (the workers' path),
when the model supports batching.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import torch

from rstitch_core.drafting.cost import fit_pass_cost
from rstitch_core.drafting.profile import CostProfile, cached_profile, default_path, runner_key
from rstitch_core.models.backend import Cache, ModelBackend, PassRequest


@dataclass(frozen=True)
class Grid:
    """Which passes to time. Verify-style passes need the logits of every fed token; prefill-style
    ones of the last only (a prompt), which the LM head makes much cheaper per token."""

    contexts: tuple[int, ...]  # kv of the verify-style single-row passes
    sizes: tuple[int, ...]  # their n (1 = a decode step)
    prefills: tuple[int, ...]  # n of prefill-style passes on an empty cache
    batch_rows: tuple[int, ...]  # b of batched passes (at the first context)
    batch_sizes: tuple[int, ...]  # their n per row
    min_seconds: float = 0.3  # repeat a point until this much time is spent on it ...
    max_reps: int = 5  # ... or this many passes, and keep the least
    rounds: int = 2  # visits of the whole grid

    def __post_init__(self):
        groups = (self.contexts, self.sizes, self.prefills, self.batch_rows, self.batch_sizes)
        if not self.sizes or not self.contexts or any(v < 0 or not isinstance(v, int) for g in groups for v in g):
            raise ValueError(f"grid: contexts and sizes must be non-empty and every value a non-negative int, "
                             f"got {self}")
        if 1 not in self.sizes or any(n < 1 for n in (*self.sizes, *self.prefills, *self.batch_sizes)):
            raise ValueError(f"grid: sizes must include 1 (a decode step) and every n must be >= 1, got {self}")
        if self.max_reps < 1 or self.rounds < 1 or self.min_seconds < 0:
            raise ValueError(f"grid: need max_reps >= 1, rounds >= 1 and min_seconds >= 0, "
                             f"got {self.max_reps}, {self.rounds}, {self.min_seconds}")


# About 90 tokens of passes per model and round: about a minute for the 0.5B/1.5B pair on two cores.
CPU_GRID = Grid(contexts=(32, 512), sizes=(1, 2, 4, 8), prefills=(8, 32), batch_rows=(4,), batch_sizes=(1, 4),
                min_seconds=0.3, max_reps=2, rounds=2)
GPU_GRID = Grid(contexts=(32, 512, 2048), sizes=(1, 2, 4, 8, 16, 32), prefills=(64, 256, 1024),
                batch_rows=(4, 16, 32), batch_sizes=(1, 4, 8), min_seconds=0.05, max_reps=10, rounds=3)


def default_grid(device: torch.device) -> Grid:
    return GPU_GRID if device.type == "cuda" else CPU_GRID


def measure(runner: ModelBackend, grid: Grid, log=None) -> tuple[list[list], bool]:
    """Timed points [n, kv, b, logits, seconds] of `runner`, and whether batched passes were timed.

    The grid is visited `grid.rounds` times and each point keeps its least time: other work on the
    machine only ever adds time, and a burst of it then spoils one visit, not the point. Busy
    machines still inflate every figure: profile a quiet one.
    """
    warm = runner.filled_cache(8)
    _time(lambda: (runner.forward(warm, [1, 2]), warm.crop(8)), grid)  # warm-up, untimed
    _release(runner, warm)
    caches = {kv: runner.filled_cache(kv) for kv in grid.contexts}
    # Contexts alternate, and every other round runs backwards, so a burst of other work lands on
    # neighbours of different kv and n instead of bending the fit's kv or n slope.
    jobs = [((n, kv, 1, n), _single(runner, caches[kv], n)) for n in grid.sizes for kv in grid.contexts]
    jobs += [((n, 0, 1, 1), _prefill(runner, n)) for n in grid.prefills]
    why_not = runner.batching_off_reason()
    pool = runner.batch_pool() if why_not is None and grid.batch_rows else None
    pooled: list[Cache] = []
    if pool is not None:
        jobs += _batched_jobs(runner, pool, grid, pooled)
    elif log and grid.batch_rows:
        log(f"{runner.name}: no batched passes ({why_not}); batch costs are extrapolated")
    best: dict[tuple, float] = {}
    try:
        for r in range(grid.rounds):
            for point, run in (jobs if r % 2 == 0 else reversed(jobs)):
                best[point] = min(best.get(point, float("inf")), _time(run, grid))
    finally:
        for cache in [*caches.values(), *pooled]:
            _release(runner, cache)
    return [[*point, best[point]] for point, _ in jobs], why_not is None


def profile_pair(slm: ModelBackend, llm: ModelBackend, grid: Grid | None = None, log=None) -> CostProfile:
    """Measure and fit both models of a pair; `log(line)` hears about progress."""
    if slm.weights != llm.weights or slm.device != llm.device:
        raise ValueError(f"profile both models in one dtype on one device, got slm {slm.weights} on {slm.device} "
                         f"and llm {llm.weights} on {llm.device}")
    key = runner_key(slm, llm)
    grid = grid or default_grid(llm.device)
    costs, points, batched = {}, {}, True
    for name, runner in (("slm", slm), ("llm", llm)):
        start = time.perf_counter()
        points[name], ok = measure(runner, grid, log)
        costs[name], batched = fit_pass_cost([tuple(p) for p in points[name]]), batched and ok
        if log:
            log(f"{name}: {len(points[name])} points timed in {time.perf_counter() - start:.1f} s")
    return CostProfile(key, costs["slm"], costs["llm"], batched, points)


def cached_or_measured(slm: ModelBackend, llm: ModelBackend, cache_dir=None, log=None) -> CostProfile:
    """The pair's saved profile for this machine, or a fresh one measured now and saved (start-up)."""
    key = runner_key(slm, llm)
    profile = cached_profile(key, cache_dir)
    if profile is None:
        profile = profile_pair(slm, llm, log=log)
        path = profile.save(default_path(key, cache_dir))
        if log:
            log(f"wrote {path}")
    elif log:
        log(f"reusing {default_path(key, cache_dir)}")
    return profile


def _time(run, grid: Grid) -> float:
    """Least seconds of run() over up to grid.max_reps calls (fewer once min_seconds are spent)."""
    times: list[float] = []
    while len(times) < grid.max_reps and (sum(times) < grid.min_seconds or not times):
        _sync()
        start = time.perf_counter()
        run()
        _sync()
        times.append(time.perf_counter() - start)
    return min(times)


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _tokens(runner: ModelBackend, n: int) -> list[int]:
    return [(i * 7919 + 13) % runner.vocab_size for i in range(n)]


def _single(runner: ModelBackend, cache: Cache, n: int):
    """A verify-style pass of n tokens on `cache`, cropped back after so every visit sees the same kv."""
    def run():
        kv = cache.num_tokens
        runner.forward(cache, _tokens(runner, n), num_logits=n)
        cache.crop(kv)
    return run


def _prefill(runner: ModelBackend, n: int):
    def run():
        cache = runner.new_cache()
        runner.forward(cache, _tokens(runner, n))
        _release(runner, cache)
    return run


def _release(runner: ModelBackend, cache: Cache) -> None:
    """Give a cache back where the backend holds it outside Python (a llama.cpp sequence)."""
    if hasattr(cache, "release"):
        cache.release()


def _batched_jobs(runner: ModelBackend, pool, grid: Grid, pooled: list) -> list:
    """b rows of verify-style passes at the first context, through the workers' batched path; the
    caches they use are added to `pooled` (to release)."""
    jobs, kv = [], grid.contexts[0]
    for b in grid.batch_rows:
        caches = [runner.filled_cache(kv, pool) for _ in range(b)]
        pooled += caches
        jobs += [((n, kv, b, n), _batched(runner, pool, caches, kv, n)) for n in grid.batch_sizes]
    return jobs


def _batched(runner: ModelBackend, pool, caches: list, kv: int, n: int):
    def run():
        pool.run([PassRequest(c, _tokens(runner, n), n) for c in caches])
        for c in caches:
            c.crop(kv)
    return run


def stderr_log(line: str) -> None:
    print(f"rstitch profile: {line}", file=sys.stderr, flush=True)
