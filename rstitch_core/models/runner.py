"""A causal LM behind the narrow interface the decoding loop needs: feed unseen tokens, get logits."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import torch
from transformers import DynamicCache

from rstitch_core.models.prefill import CastKV, PrefillCopy


@dataclass
class KVCache:
    """One model's KV cache for one sequence; `num_tokens` positions are held."""

    kv: DynamicCache
    num_tokens: int = 0

    def crop(self, num_tokens: int) -> None:
        """Forget every position from `num_tokens` on (rejected speculative tokens)."""
        if num_tokens < self.num_tokens:
            self.kv.crop(num_tokens - self.num_tokens)  # transformers 5: a negative count removes
            self.num_tokens = num_tokens


@dataclass(frozen=True, slots=True)
class ForwardOutput:
    logits: torch.Tensor  # [N, V] float32: next-token logits at the last N fed positions
    hidden: torch.Tensor | None  # [D]: final hidden state at the last fed position, if asked
    seconds: float


class ModelRunner:
    """Wraps one Hugging Face causal LM and its tokenizer.

    Every pass feeds only tokens the cache does not hold yet, so a pass over n tokens is a partial
    prefill (n > 1) or a decode step (n = 1) with the same code, and the next-token distribution
    comes from that same pass. With a `prefill` copy (models/prefill.py), passes of at least its
    min_tokens run on the copy, in its dtype, over the same cache.
    """

    def __init__(self, model, tokenizer, name: str = "model", prefill: PrefillCopy | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.prefill = prefill
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])  # logits width
        self.hidden_size = int(config.hidden_size)
        self.max_context = int(getattr(config, "max_position_embeddings", 0) or 1 << 30)
        self.eos_token_ids = eos_token_ids(model, tokenizer)

    def new_cache(self) -> KVCache:
        return KVCache(DynamicCache(config=self.model.config))

    @torch.inference_mode()
    def forward(self, cache: KVCache, token_ids: Sequence[int], num_logits: int = 1,
                hidden: bool = False) -> ForwardOutput:
        """Feed `token_ids` (positions cache.num_tokens ...) and extend the cache over them.

        Returns the logits of the last `num_logits` fed positions (speculative verification needs
        one per draft token plus one) and, when `hidden`, the final hidden state of the last one.
        """
        if not token_ids:
            raise ValueError(f"{self.name}: a forward pass needs at least one new token")
        if not 1 <= num_logits <= len(token_ids):
            raise ValueError(f"{self.name}: num_logits={num_logits} outside [1, {len(token_ids)}]")
        start = time.perf_counter()
        input_ids = torch.tensor([list(token_ids)], dtype=torch.long, device=self.device)  # [1, S]
        model, past = self.model, cache.kv
        if self.prefill is not None and self.prefill.takes(len(token_ids)):
            model, past = self.prefill.model, CastKV(cache.kv, self.dtype, self.prefill.dtype)
        out = model(input_ids=input_ids, past_key_values=past, use_cache=True,
                    logits_to_keep=num_logits, output_hidden_states=hidden)
        logits = out.logits[0, -num_logits:].float()  # [N, V]
        last_hidden = out.hidden_states[-1][0, -1].to(self.dtype) if hidden else None  # [D]
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        cache.num_tokens += len(token_ids)
        return ForwardOutput(logits, last_hidden, time.perf_counter() - start)


def eos_token_ids(model, tokenizer) -> frozenset[int]:
    """Every id that ends generation: the tokenizer's EOS plus the generation config's list."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen = getattr(model, "generation_config", None)
    gen_eos = getattr(gen, "eos_token_id", None) if gen is not None else None
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif gen_eos:
        ids.update(int(i) for i in gen_eos)
    return frozenset(ids)
