"""A machine's cost profile for a model pair: each model's pass time over (new tokens, cached tokens,
batch rows), fitted from timed passes, saved as JSON under a key it must match to be used.

The key is what a pass's time depends on: each model's shapes (not its weights: a random-weight
model of the same shape times the same), the dtype, the device type, the CPU or GPU model, and on
CPUs the number of threads. `rstitch profile` writes it; the engine, the workers and
`rstitch eval report --cost-profile` read it.
"""

from __future__ import annotations

import json
import os
import platform
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

import torch

from rstitch_core.assets import cache_root
from rstitch_core.drafting.cost import PassCost
from rstitch_core.models.backend import model_id
from rstitch_core.models.gguf_info import GGUFInfo
from rstitch_core.models.loading import cpuinfo_field, parse_device, parse_dtype
from rstitch_core.models.prefill import PrefillSpec

FORMAT = "rstitch-cost-profile/1"


@dataclass(frozen=True)
class ProfileKey:
    """What a profile was measured on; a profile answers only for an equal key."""

    slm: str  # model_id() of each model
    llm: str
    dtype: str
    device: str  # "cpu" or "cuda"
    hardware: str  # CPU model name, or GPU name
    threads: int = 0  # torch CPU threads (0 on CUDA, where they do not set the pass time)

    def __post_init__(self):
        for name in ("slm", "llm", "dtype", "device", "hardware"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"profile key: {name} must be a non-empty string, got {getattr(self, name)!r}")

    def slug(self) -> str:
        """A file name for the default cache: every key field, filesystem-safe."""
        raw = f"{self.slm}__{self.llm}__{self.dtype}__{self.device}__{self.hardware}__t{self.threads}"
        return re.sub(r"[^A-Za-z0-9.+-]+", "-", raw).strip("-")

    def differences(self, other: ProfileKey) -> list[str]:
        return [f"{k}: {getattr(self, k)!r} != {getattr(other, k)!r}" for k in asdict(self)
                if getattr(self, k) != getattr(other, k)]


@dataclass(frozen=True)
class CostProfile:
    """Both models' fitted pass costs on one machine, with the timed points they were fitted to."""

    key: ProfileKey
    slm: PassCost
    llm: PassCost
    batched: bool = True  # whether b > 1 rows were timed as real batched passes
    points: dict = field(default_factory=dict)  # model -> [[n, kv, b, logits, seconds], ...]

    def model(self, name: str) -> PassCost:
        if name not in ("slm", "llm"):
            raise ValueError(f"model must be 'slm' or 'llm', got {name!r}")
        return self.slm if name == "slm" else self.llm

    def trajectory_seconds(self, passes: Iterable[tuple[str, int, int]]) -> float:
        """Projected latency of single-sequence passes given as (model, n new tokens, kv cached): the
        latency R-Stitch+ training rewards."""
        return sum(self.model(m).seconds(n, kv) for m, n, kv in passes)

    def to_dict(self) -> dict:
        return {"format": FORMAT, "key": asdict(self.key), "batched": self.batched,
                "slm": _cost_dict(self.slm), "llm": _cost_dict(self.llm), "points": self.points}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path, expect: ProfileKey | None = None) -> CostProfile:
        """Read a saved profile; ValueError if it is not one, or if `expect` is given and differs."""
        try:
            raw = json.loads(Path(path).read_text())
            if raw.get("format") != FORMAT:
                raise KeyError(f"format {raw.get('format')!r}, expected {FORMAT!r}")
            profile = cls(ProfileKey(**raw["key"]), _cost(raw["slm"]), _cost(raw["llm"]),
                          bool(raw.get("batched", True)), raw.get("points", {}))
        except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"{path}: not a cost profile ({err})") from None
        if expect is not None and profile.key != expect:
            raise ValueError(f"{path} was measured on another setup: {'; '.join(profile.key.differences(expect))}")
        return profile


def _cost_dict(cost: PassCost) -> dict:
    return {"coef": list(cost.coef), "knee": cost.knee}


def _cost(raw: dict) -> PassCost:
    coef = tuple(float(c) for c in raw["coef"])
    if len(coef) != 6 or min(coef) < 0:
        raise KeyError(f"coef must be 6 non-negative numbers, got {raw['coef']!r}")
    return PassCost(coef, float(raw.get("knee", 0.0)))


# Environment variables that cap the instruction set torch's CPU kernels use: with both at AVX2 an
# AMX Xeon computes bf16 as an AVX2-only CPU does (emulated), and its passes cost accordingly.
ISA_LIMITS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")


def hardware_name(device: torch.device) -> str:
    """The GPU's name on CUDA, else the CPU model name as lscpu prints it, with any ISA limit set
    in the environment (ISA_LIMITS) appended: such a run is another machine for pass costs."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = cpuinfo_field("model name") or platform.processor() or platform.machine() or "unknown-cpu"
    limits = [f"{var}={os.environ[var]}" for var in ISA_LIMITS if os.environ.get(var)]
    return f"{name} [{' '.join(limits)}]" if limits else name


def profile_key(slm_config, llm_config, dtype: str | torch.dtype, device: str | torch.device) -> ProfileKey:
    """The key of a pair (their transformers configs) in `dtype` on `device` (on this machine)."""
    dtype, device = str(parse_dtype(dtype)).removeprefix("torch."), parse_device(device)
    threads = torch.get_num_threads() if device.type == "cpu" else 0
    return ProfileKey(model_id(slm_config), model_id(llm_config), dtype, device.type, hardware_name(device), threads)


def runner_key(slm, llm) -> ProfileKey:
    """The key of a loaded pair on any backend (ModelBackend: model_id, weights, threads)."""
    return ProfileKey(slm.model_id, llm.model_id, llm.weights, llm.device.type, hardware_name(llm.device),
                      llm.threads)


def gguf_key(slm_path: str | Path, llm_path: str | Path, threads: int | None = None) -> ProfileKey:
    """The key a pair of GGUF files has on the llama.cpp backend here, read from their headers
    (what runner_key gives once they are loaded with `threads`, default every core we may use)."""
    threads = threads or len(os.sched_getaffinity(0))
    return ProfileKey(GGUFInfo.read(slm_path).model_id, GGUFInfo.read(llm_path).model_id, "gguf", "cpu",
                      hardware_name(torch.device("cpu")), threads)


def default_path(key: ProfileKey, cache_dir: str | Path | None = None) -> Path:
    """Where a profile for `key` is kept: <rstitch cache>/profiles/<key slug>.json."""
    return cache_root(cache_dir) / "profiles" / f"{key.slug()}.json"


def cached_profile(key: ProfileKey, cache_dir: str | Path | None = None) -> CostProfile | None:
    """The saved profile for exactly `key`, or None (a miss) when there is none."""
    path = default_path(key, cache_dir)
    return CostProfile.load(path, expect=key) if path.is_file() else None


@dataclass(frozen=True)
class DtypeChoice:
    """The dtype to decode in, the one a prompt prefills fastest in, and the figures behind them."""

    dtype: str
    prefill_dtype: str
    lines: tuple[str, ...]
    prefill_min_tokens: int | None = None  # passes this long are faster in prefill_dtype (None: none are)

    @property
    def prefill(self) -> PrefillSpec | None:
        """Long passes on a copy in prefill_dtype, where that measured faster (models/prefill.py)."""
        return None if self.prefill_min_tokens is None else PrefillSpec(self.prefill_dtype, self.prefill_min_tokens)


# A long pass goes to the prefill copy only where the profiles project it this much cheaper: the fits
# are least sure near the crossover, and the copy's passes also convert the context's keys/values.
PREFILL_MIN_GAIN = 0.2
MAX_PREFILL_SCAN = 4096


def choose_dtype(profiles: Iterable[CostProfile], context_tokens: int = 256, draft_tokens: int = 8,
                 prompt_tokens: int = 256) -> DtypeChoice:
    """Pick the dtype whose LLM decodes fastest on this machine, from profiles differing only in dtype.

    Decoding is scored by an LLM decode step plus an LLM pass verifying `draft_tokens` drafts (both
    at `context_tokens` cached), since plain decoding runs the one and drafting the other; the
    prefill dtype by the LLM's pass over a `prompt_tokens` prompt. Native bf16 (AMX, GPUs) usually
    wins both; CPUs that emulate it (AVX2 only) decode faster in bf16 but prefill far slower, and
    then `prefill_min_tokens` is the shortest pass the prefill dtype runs PREFILL_MIN_GAIN cheaper.
    """
    profiles = list(profiles)
    if not profiles:
        raise ValueError("choose_dtype needs at least one profile")
    base = profiles[0].key
    for p in profiles[1:]:
        diff = [d for d in p.key.differences(base) if not d.startswith("dtype")]
        if diff:
            raise ValueError(f"profiles to compare must differ only in dtype: {'; '.join(diff)}")
    k, lines, decode, prefill = draft_tokens, [], {}, {}
    for p in profiles:
        step, verify = p.llm.decode_seconds(context_tokens), p.llm.verify_seconds(k + 1, context_tokens)
        decode[p.key.dtype] = step + verify
        prefill[p.key.dtype] = p.llm.seconds(prompt_tokens, 0)
        lines.append(f"{p.key.dtype}: LLM decode step {step * 1e3:.1f} ms, {k + 1}-token verify pass "
                     f"{verify * 1e3:.1f} ms ({verify / step:.2f} steps), {prompt_tokens}-token prefill "
                     f"{prefill[p.key.dtype]:.2f} s; SLM decode step "
                     f"{p.slm.decode_seconds(context_tokens) * 1e3:.1f} ms")
    dtype, prefill_dtype = min(decode, key=decode.get), min(prefill, key=prefill.get)
    by_dtype = {p.key.dtype: p for p in profiles}
    min_tokens = None if prefill_dtype == dtype else next(
        (n for n in range(2, MAX_PREFILL_SCAN + 1) if by_dtype[prefill_dtype].llm.seconds(n, 0)
         <= (1 - PREFILL_MIN_GAIN) * by_dtype[dtype].llm.seconds(n, 0)), None)
    lines.append(f"recommended dtype: {dtype}" + ("" if prefill_dtype == dtype
                                                 else f" (prompt prefill is faster in {prefill_dtype})"))
    if min_tokens is not None:
        lines.append(f"recommended prefill: {prefill_dtype}:{min_tokens} (passes of >= {min_tokens} tokens on a "
                     f"{prefill_dtype} copy: {by_dtype[prefill_dtype].llm.seconds(min_tokens, 0) * 1e3:.0f} ms "
                     f"against {by_dtype[dtype].llm.seconds(min_tokens, 0) * 1e3:.0f} ms in {dtype})")
    return DtypeChoice(dtype, prefill_dtype, tuple(lines), min_tokens)
