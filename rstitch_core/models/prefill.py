"""Long passes in another dtype: a second copy of the model for prompt prefills on CPUs that emulate bf16.

Decoding is memory-bound and bf16 halves the bytes of each step, so it decodes faster even where
the CPU only emulates bf16 arithmetic (AVX2: LLM step 310 ms in bf16, 573 ms in float32 on the
2-core EPYC of docs/results.md). A pass over many tokens is compute-bound instead, and emulated bf16
loses it badly there (a 128-token prefill: 58 bf16 steps, 18 s, against 4.2 s in float32). So a
model may carry a float32 copy that runs every pass of at least `min_tokens` new tokens, on the
same KV cache: the copy's attention layers write their keys/values through CastKV, which stores
them in the cache's dtype and hands back the whole context in the copy's. Nothing else changes:
the cache, its slots and its length are the decode model's, and decode steps never see the copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PREFILL_DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class PrefillSpec:
    """Run passes of >= min_tokens new tokens in `dtype` (a second copy of the weights)."""

    dtype: str = "float32"
    min_tokens: int = 32

    def __post_init__(self):
        if self.dtype not in PREFILL_DTYPES:
            raise ValueError(f"prefill dtype must be one of {', '.join(PREFILL_DTYPES)}, got {self.dtype!r}")
        if not isinstance(self.min_tokens, int) or self.min_tokens < 2:
            raise ValueError(f"prefill min_tokens must be an int >= 2 (a decode step is 1), got {self.min_tokens!r}")

    @classmethod
    def parse(cls, text: str) -> PrefillSpec | None:
        """'off' -> None; 'DTYPE' or 'DTYPE:MIN_TOKENS' -> a spec (e.g. 'float32:24')."""
        if not isinstance(text, str):
            raise ValueError(f"--prefill: expected off, DTYPE or DTYPE:MIN_TOKENS, got {text!r}")
        if text == "off":
            return None
        dtype, _, min_tokens = text.partition(":")
        try:
            return cls(dtype, int(min_tokens)) if min_tokens else cls(dtype)
        except ValueError as err:
            raise ValueError(f"--prefill: expected off, DTYPE or DTYPE:MIN_TOKENS, got {text!r} ({err})") from None

    def __str__(self) -> str:
        return f"{self.dtype}:{self.min_tokens}"


@dataclass(frozen=True)
class PrefillCopy:
    """The loaded copy and when it runs."""

    model: torch.nn.Module
    min_tokens: int

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def takes(self, num_tokens: int) -> bool:
        return num_tokens >= self.min_tokens


class CastKV:
    """A KV cache (DynamicCache or SlotKV) seen by a model of another dtype: update() stores the
    new keys/values in the cache's dtype and returns the layer's keys/values in the model's.
    Everything else (lengths, masks, slots) is the wrapped cache's."""

    def __init__(self, base, cache_dtype: torch.dtype, model_dtype: torch.dtype):
        self.base, self.cache_dtype, self.model_dtype = base, cache_dtype, model_dtype

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        """key/value_states [B, kv_heads, T, D] in the model's dtype -> the layer's [B, kv_heads, L, D]."""
        keys, values = self.base.update(key_states.to(self.cache_dtype), value_states.to(self.cache_dtype),
                                        layer_idx, *args, **kwargs)
        return keys.to(self.model_dtype), values.to(self.model_dtype)

    def __getattr__(self, name):
        return getattr(self.base, name)
