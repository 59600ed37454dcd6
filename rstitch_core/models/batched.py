"""Batched forward passes over many sequences: one slot of a shared KV cache per sequence.

A worker serving many sessions runs them as one forward pass per step: decodes (one token) and
partial prefills (n tokens) alike, right-padded to the longest. Each sequence owns one slot of the
per-layer cache tensors [slots, kv_heads, capacity, head_dim] for its whole life, so joining or
leaving a batch moves no cache at all, and rolling back is just lowering the slot's length. Inside
a pass each layer writes the new keys/values at every row's own positions and attends over its
batch rows' slots (a gather of the batch's slots, up to the longest sequence in the batch), with an
explicit mask: row b's query t sees keys 0 .. cached_b + t.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rstitch_core.models.backend import PassRequest
from rstitch_core.models.prefill import CastKV

_INITIAL_CAPACITY = 256


@dataclass
class SlotCache:
    """One sequence's handle on a SlotKV: its slot and how many positions it holds (KVCache interface)."""

    pool: SlotKV
    slot: int
    num_tokens: int = 0

    def crop(self, num_tokens: int) -> None:
        """Forget every position from `num_tokens` on: the stale entries are simply never attended."""
        self.num_tokens = min(self.num_tokens, num_tokens)

    def release(self) -> None:
        """Give the slot back (the sequence is gone)."""
        if self.slot >= 0:
            self.pool.free(self.slot)
            self.slot = -1


class SlotKV:
    """Per-layer key/value tensors for up to `slots` sequences, grown by doubling when needed.

    It is handed to the model as `past_key_values`: the attention layers call update(), which writes
    the batch's new entries and returns the batch's keys and values.
    """

    def __init__(self, num_layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device):
        self.num_layers, self.kv_heads, self.head_dim = num_layers, kv_heads, head_dim
        self.dtype, self.device = dtype, device
        self.slots, self.capacity = 0, 0
        self.keys: list[torch.Tensor] = []  # per layer [slots, kv_heads, capacity + 1, head_dim]
        self.values: list[torch.Tensor] = []
        self._free: list[int] = []
        # set by prepare() for the pass in progress
        self._rows: torch.Tensor | None = None  # [B] slot of each batch row
        self._write: tuple[torch.Tensor, torch.Tensor] | None = None  # ([B, T] slots, [B, T] positions)
        self._length = 0  # keys attended: the longest sequence of the batch after this pass

    def allocate(self) -> SlotCache:
        if not self._free:
            self._grow(slots=max(1, 2 * self.slots), capacity=max(self.capacity, _INITIAL_CAPACITY))
        return SlotCache(self, self._free.pop())

    def free(self, slot: int) -> None:
        self._free.append(slot)

    @property
    def slots_in_use(self) -> int:
        return self.slots - len(self._free)

    def _grow(self, slots: int, capacity: int) -> None:
        """Reallocate bigger tensors and copy what is there (rare: sizes double)."""
        shape = (slots, self.kv_heads, capacity + 1, self.head_dim)  # the last column takes padding
        for cache in (self.keys, self.values):
            for i in range(self.num_layers):
                new = torch.zeros(shape, dtype=self.dtype, device=self.device)
                if i < len(cache):
                    old = cache[i]
                    new[:old.shape[0], :, :self.capacity] = old[:, :, :self.capacity]
                    cache[i] = new
                else:
                    cache.append(new)
        self._free.extend(range(slots - 1, self.slots - 1, -1))  # new slots, lowest first out
        self.slots, self.capacity = slots, capacity

    def prepare(self, caches: list[SlotCache], lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Get ready for a pass feeding lengths[b] new tokens to caches[b]; return position ids
        [B, T] and the attention mask [B, 1, T, L] (True = attend)."""
        need = max(c.num_tokens + n for c, n in zip(caches, lengths))
        if need > self.capacity:
            capacity = self.capacity
            while capacity < need:
                capacity *= 2
            self._grow(self.slots, capacity)
        width = max(lengths)
        cached = torch.tensor([c.num_tokens for c in caches], device=self.device)[:, None]  # [B, 1]
        steps = torch.arange(width, device=self.device)[None, :]  # [1, T]
        real = steps < torch.tensor(lengths, device=self.device)[:, None]  # [B, T]
        positions = cached + steps  # [B, T]
        rows = torch.tensor([c.slot for c in caches], device=self.device)
        # Padding queries write to the spare last column, which no real query ever attends.
        self._write = (rows[:, None].expand(-1, width), torch.where(real, positions, self.capacity))
        self._rows, self._length = rows, need
        keys = torch.arange(need, device=self.device)[None, None, :]  # [1, 1, L]
        mask = keys <= positions[:, :, None]  # [B, T, L]: causal within each row's own sequence
        mask &= real[:, :, None] | (keys == 0)  # padding queries see one key (no all-masked rows)
        return positions.masked_fill(~real, 0), mask[:, None]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int,
               *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """key/value_states [B, kv_heads, T, D] -> the batch's keys/values [B, kv_heads, L, D]."""
        slots, positions = self._write
        self.keys[layer_idx][slots, :, positions] = key_states.transpose(1, 2)
        self.values[layer_idx][slots, :, positions] = value_states.transpose(1, 2)
        return (self.keys[layer_idx][self._rows, :, :self._length],
                self.values[layer_idx][self._rows, :, :self._length])

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self._length


def supports_batching(model) -> str | None:
    """None if `model` can run batched passes over a SlotKV, else the reason it cannot."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    types = set(getattr(config, "layer_types", None) or ["full_attention"])
    if types != {"full_attention"}:
        return f"layer types {sorted(types)} (only full attention is batched)"
    if getattr(config, "_attn_implementation", "sdpa") not in ("sdpa", "eager"):
        return f"attention implementation {config._attn_implementation!r}"
    return None


def new_slot_kv(model) -> SlotKV:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    param = next(model.parameters())
    return SlotKV(config.num_hidden_layers, getattr(config, "num_key_value_heads", None) or heads, head_dim,
                  param.dtype, param.device)


@torch.inference_mode()
def forward_batch(model, kv: SlotKV, requests: list[PassRequest]) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """One forward pass over every request; per request its logits [num_logits, V] (float32) and,
    if asked, the final hidden state [D] of its last fed position."""
    lengths = [len(r.token_ids) for r in requests]
    width = max(lengths)
    pad = 0
    ids = torch.tensor([r.token_ids + [pad] * (width - len(r.token_ids)) for r in requests],
                       dtype=torch.long, device=kv.device)  # [B, T]
    positions, mask = kv.prepare([r.cache for r in requests], lengths)
    if model.config._attn_implementation == "eager":
        mask = torch.zeros(mask.shape, dtype=kv.dtype, device=kv.device).masked_fill(~mask, torch.finfo(kv.dtype).min)
    out = model.model(input_ids=ids, attention_mask={"full_attention": mask}, position_ids=positions,
                      past_key_values=kv, use_cache=True)
    hidden = out.last_hidden_state  # [B, T, D]
    # Only the positions whose logits are wanted go through the LM head (its output is B x V wide).
    rows = [b for b, r in enumerate(requests) for _ in range(r.num_logits)]
    cols = [n - r.num_logits + i for r, n in zip(requests, lengths) for i in range(r.num_logits)]
    logits = model.lm_head(hidden[rows, cols]).float()  # [sum num_logits, V]
    results, start = [], 0
    for b, (r, n) in enumerate(zip(requests, lengths)):
        results.append((logits[start:start + r.num_logits], hidden[b, n - 1] if r.hidden else None))
        start += r.num_logits
        r.cache.num_tokens += n
    return results


class TorchBatchPool:
    """The torch backend's BatchPool: a SlotKV of the runner's model; with a prefill copy
    (models/prefill.py), a pass's long rows run on the copy as a second pass over the same slots."""

    def __init__(self, runner):
        self.runner = runner
        self.kv = new_slot_kv(runner.model)

    def allocate(self) -> SlotCache:
        return self.kv.allocate()

    @property
    def slots_in_use(self) -> int:
        return self.kv.slots_in_use

    def run(self, requests: list[PassRequest]) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        prefill = self.runner.prefill
        if prefill is None:
            results = forward_batch(self.runner.model, self.kv, requests)
        else:
            by_id: dict[int, tuple] = {}
            long = [r for r in requests if prefill.takes(len(r.token_ids))]
            short = [r for r in requests if not prefill.takes(len(r.token_ids))]
            if short:
                by_id.update(zip(map(id, short), forward_batch(self.runner.model, self.kv, short)))
            if long:
                kv = CastKV(self.kv, self.kv.dtype, prefill.dtype)
                for r, (logits, hidden) in zip(long, forward_batch(prefill.model, kv, long)):
                    by_id[id(r)] = (logits, None if hidden is None else hidden.to(self.kv.dtype))
            results = [by_id[id(r)] for r in requests]
        if self.kv.device.type == "cuda":
            torch.cuda.synchronize(self.kv.device)
        return results
