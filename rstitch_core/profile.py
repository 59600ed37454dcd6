"""A machine's cost profile for a model pair: each model's pass time over (new tokens, cached tokens,
batch rows), fitted from timed passes, saved as JSON under a key it must match to be used.

The key is what a pass's time depends on: each model's shapes (not its weights: a random-weight
model of the same shape times the same), the dtype, the device type, the CPU or GPU model, and on
CPUs the number of threads. `rstitch profile` writes it; the engine, the workers and
`rstitch eval report --cost-profile` read it.
"""

from __future__ import annotations

import json
import platform
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

import torch

from rstitch_core.costmodel import PassCost

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
        """Projected latency of single-sequence passes given as (model, n, kv) (CostModel's form)."""
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


def model_id(config) -> str:
    """The shapes that set a model's pass time, from its config: 'qwen2-l28-h1536-i8960-a12-kv2-v151936'."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    return (f"{config.model_type}-l{config.num_hidden_layers}-h{config.hidden_size}-i{config.intermediate_size}"
            f"-a{config.num_attention_heads}-kv{kv_heads}-v{config.vocab_size}")


def hardware_name(device: torch.device) -> str:
    """The GPU's name on CUDA, else the CPU model name as lscpu prints it."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    from rstitch_core.models.loading import cpuinfo_field

    return cpuinfo_field("model name") or platform.processor() or platform.machine() or "unknown-cpu"


def profile_key(slm_config, llm_config, dtype: str | torch.dtype, device: str | torch.device) -> ProfileKey:
    """The key of a pair (their transformers configs) in `dtype` on `device` (on this machine)."""
    from rstitch_core.models.loading import parse_device, parse_dtype

    dtype, device = str(parse_dtype(dtype)).removeprefix("torch."), parse_device(device)
    threads = torch.get_num_threads() if device.type == "cpu" else 0
    return ProfileKey(model_id(slm_config), model_id(llm_config), dtype, device.type, hardware_name(device), threads)


def default_path(key: ProfileKey, cache_dir: str | Path | None = None) -> Path:
    """Where a profile for `key` is kept: <rstitch cache>/profiles/<key slug>.json."""
    from rstitch_core.assets import cache_root

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


def choose_dtype(profiles: Iterable[CostProfile], context_tokens: int = 256, draft_tokens: int = 8,
                 prompt_tokens: int = 256) -> DtypeChoice:
    """Pick the dtype whose LLM decodes fastest on this machine, from profiles differing only in dtype.

    Decoding is scored by an LLM decode step plus an LLM pass verifying `draft_tokens` drafts (both
    at `context_tokens` cached), since plain decoding runs the one and drafting the other; the
    prefill dtype by the LLM's pass over a `prompt_tokens` prompt. Native bf16 (AMX, GPUs) usually
    wins both; CPUs that emulate it (AVX2 only) can lose in bf16 on the multi-token passes.
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
    lines.append(f"recommended dtype: {dtype}" + ("" if prefill_dtype == dtype
                                                 else f" (prompt prefill is faster in {prefill_dtype})"))
    return DtypeChoice(dtype, prefill_dtype, tuple(lines))
