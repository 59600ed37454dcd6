"""A causal LM behind the narrow interface the decoding loop needs: feed unseen tokens, get logits."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import torch
from transformers import DynamicCache

from rstitch_core.models.backend import ForwardOutput, check_pass, model_id
from rstitch_core.models.batched import TorchBatchPool, supports_batching
from rstitch_core.models.prefill import CastKV, PrefillCopy

__all__ = ["ForwardOutput", "KVCache", "ModelRunner", "eos_token_ids"]


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


class ModelRunner:
    """Wraps one Hugging Face causal LM and its tokenizer: the torch backend (models/backend.py).

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

    backend = "torch"

    @property
    def model_id(self) -> str:
        return model_id(self.model.config)

    @property
    def weights(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    @property
    def threads(self) -> int:
        return torch.get_num_threads() if self.device.type == "cpu" else 0

    def new_cache(self) -> KVCache:
        return KVCache(DynamicCache(config=self.model.config))

    def release(self, cache: KVCache) -> None:
        """Nothing to give back: a DynamicCache's tensors go when the cache does."""

    def batch_pool(self):
        """A SlotKV pool whose passes run as one (models/batched.py)."""
        return TorchBatchPool(self)

    def batching_off_reason(self) -> str | None:
        return supports_batching(self.model)

    def filled_cache(self, num_tokens: int, pool=None):
        """A cache holding `num_tokens` positions of zero keys/values: a pass's time depends on the
        cache's shape, not its contents, and prefilling 512 tokens would cost more than the
        profiler's whole grid on a 2-core CPU."""
        if pool is not None:
            cache = pool.allocate()
            cache.num_tokens = num_tokens  # the slot's zero entries (grown on demand) stand for the context
            return cache
        cache = self.new_cache()
        if num_tokens == 0:
            return cache
        config = self.model.config.get_text_config() if hasattr(self.model.config, "get_text_config") \
            else self.model.config
        heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        zeros = torch.zeros(1, heads, num_tokens, head_dim, dtype=self.dtype, device=self.device)  # [1, H, kv, D]
        for layer in range(config.num_hidden_layers):
            cache.kv.update(zeros.clone(), zeros.clone(), layer)
        cache.num_tokens = num_tokens
        return cache

    @torch.inference_mode()
    def forward(self, cache: KVCache, token_ids: Sequence[int], num_logits: int = 1,
                hidden: bool = False) -> ForwardOutput:
        """Feed `token_ids` (positions cache.num_tokens ...) and extend the cache over them.

        Returns the logits of the last `num_logits` fed positions (speculative verification needs
        one per draft token plus one) and, when `hidden`, the final hidden state of the last one.
        """
        check_pass(self.name, cache, token_ids, num_logits)
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
