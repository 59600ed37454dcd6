"""The seam between the decoding loop and a model: what every backend (torch, llama.cpp) provides.

The loop and the workers need little from a model: feed the tokens a sequence's cache lacks and get
the logits of the last N fed positions; a per-sequence cache that can be cropped (rejected drafts)
and released; one batched pass over many sequences' rows (a worker's step); and what a cost profile
is keyed by. `ModelRunner` (models/runner.py, Hugging Face models in PyTorch) and `LlamaCppRunner`
(models/llamacpp.py, GGUF files through llama.cpp) implement it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable

import torch

BACKENDS = ("torch", "llamacpp")


@dataclass(frozen=True, slots=True)
class ForwardOutput:
    logits: torch.Tensor  # [N, V] float32: next-token logits at the last N fed positions
    hidden: torch.Tensor | None  # [D]: final hidden state at the last fed position, if asked
    seconds: float


@runtime_checkable
class Cache(Protocol):
    """One model's cache for one sequence: positions 0 .. num_tokens - 1 are held."""

    num_tokens: int

    def crop(self, num_tokens: int) -> None:
        """Forget every position from `num_tokens` on (rejected drafts)."""


@dataclass
class PassRequest:
    """One sequence's part of a batched pass (ModelBackend.forward's arguments)."""

    cache: Cache
    token_ids: list[int]
    num_logits: int = 1
    hidden: bool = False


class CacheSource(Protocol):
    """Where a sequence's cache comes from and goes back to: a ModelBackend, or a worker's StepEngine."""

    def new_cache(self) -> Cache:
        """An empty cache for one sequence."""

    def release(self, cache: Cache) -> None:
        """The sequence is gone: free what its cache holds."""


class BatchPool(Protocol):
    """Caches that can share one batched pass: a worker allocates every session's cache here."""

    def allocate(self) -> Cache:
        """A new empty cache (its release() gives it back)."""

    def run(self, requests: list[PassRequest]) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """One pass over every request's rows; per request (logits [num_logits, V], hidden [D] or None).
        Each request's cache then holds its fed tokens."""

    @property
    def slots_in_use(self) -> int:
        """Caches allocated and not released."""


class ModelBackend(Protocol):
    """A causal LM with its tokenizer behind the interface the loop, the workers and the profiler use."""

    backend: str  # "torch" | "llamacpp"
    name: str  # role in the pair: "slm" | "llm" (or "model")
    tokenizer: object  # a Hugging Face tokenizer: prompts, chat templates and text are always its
    vocab_size: int  # logits width
    max_context: int  # positions one sequence may hold
    eos_token_ids: frozenset[int]
    device: torch.device

    @property
    def model_id(self) -> str:
        """The shapes that set a pass's time (a cost profile's key), e.g. 'qwen2-l28-h1536-...'."""

    @property
    def weights(self) -> str:
        """The number format the passes run in: a torch dtype name, or 'gguf' (the file's own quantization)."""

    @property
    def threads(self) -> int:
        """CPU threads a pass uses (0 on a GPU)."""

    def new_cache(self) -> Cache:
        """An empty cache for one sequence."""

    def release(self, cache: Cache) -> None:
        """The sequence is gone: free what its cache holds outside Python's reach."""

    def forward(self, cache: Cache, token_ids: Sequence[int], num_logits: int = 1,
                hidden: bool = False) -> ForwardOutput:
        """Feed `token_ids` (positions cache.num_tokens ...), extend the cache over them, and return
        the logits of the last `num_logits` fed positions (and the last one's hidden state if asked)."""

    def batch_pool(self) -> BatchPool:
        """Where a worker's sessions live so that their passes run as one (see batching_off_reason)."""

    def batching_off_reason(self) -> str | None:
        """None if batch_pool() can batch this model, else why not."""

    def filled_cache(self, num_tokens: int, pool: BatchPool | None = None) -> Cache:
        """A cache (from `pool`, else a new one) holding `num_tokens` positions, for timing passes at
        that context: contents do not matter, only the shape (the profiler's)."""


def model_id(config) -> str:
    """The shapes that set a model's pass time, from its config: 'qwen2-l28-h1536-i8960-a12-kv2-v151936'."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    return (f"{config.model_type}-l{config.num_hidden_layers}-h{config.hidden_size}-i{config.intermediate_size}"
            f"-a{config.num_attention_heads}-kv{kv_heads}-v{config.vocab_size}")


def check_pass(name: str, cache: Cache, token_ids: Sequence[int], num_logits: int) -> None:
    """The arguments every backend's forward() refuses alike (ValueError)."""
    if not token_ids:
        raise ValueError(f"{name}: a forward pass needs at least one new token")
    if not 1 <= num_logits <= len(token_ids):
        raise ValueError(f"{name}: num_logits={num_logits} outside [1, {len(token_ids)}]")
    if getattr(cache, "slot", 0) < 0:
        raise ValueError(f"{name}: this cache was released")
