"""GGUF files as shipped, through llama.cpp (`llama-cpp-python`'s low-level API): the CPU backend.

One llama.cpp context per model holds every sequence's KV cache in one unified buffer, each sequence
under its own sequence id; a pass is one `llama_decode` whose batch carries every row's tokens with
their own positions, sequence ids and logits flags, so a worker's batched step is a single call.
Rolling back drops a sequence's positions from the KV memory; releasing drops all of them and
frees the id. Weights stay in the file's own quantization (mmapped, never dequantized).

Tokenization, chat templates and text stay with the Hugging Face tokenizer (read from the GGUF file
once, then cached), so both backends see the same token ids for the same prompt. The final hidden
state the R-Stitch+ router reads is not given (see HIDDEN_REFUSAL).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from rstitch_core.models.backend import ForwardOutput, PassRequest, check_pass
from rstitch_core.models.gguf_info import GGUFInfo

DEFAULT_CONTEXT = 32_768  # positions per context when nothing asks for fewer (KV memory is allocated up front)
MIN_CONTEXT = 8_192
MAX_SEQUENCES = 256  # llama.cpp's LLAMA_MAX_SEQ
HIDDEN_REFUSAL = ("the llama.cpp backend does not give the final hidden state the R-Stitch+ router reads; "
                  "run rstitch+ with --backend torch")
_UBATCH = 512  # tokens per physical pass inside one llama_decode (llama.cpp's default)
_init_lock = threading.Lock()
_initialized = False
_quiet = None


def _llama():
    """The llama_cpp module, its backend initialized once per process and its log quiet."""
    global _initialized
    try:
        import llama_cpp  # optional (the llamacpp extra): only where this backend runs
    except ImportError as err:
        raise ValueError(f"the llama.cpp backend needs llama-cpp-python ({err}): pip install 'rstitch[llamacpp]', "
                         f"or use --backend torch") from None
    with _init_lock:
        if not _initialized:
            if os.environ.get("RSTITCH_LLAMACPP_VERBOSE") != "1":  # its load-time chatter is for debugging
                global _quiet
                _quiet = llama_cpp.llama_log_callback(lambda level, text, data: None)  # kept: C holds it
                llama_cpp.llama_log_set(_quiet, None)
            llama_cpp.llama_backend_init()
            _initialized = True
    return llama_cpp


def llamacpp_available() -> str | None:
    """None if llama-cpp-python imports here, else why not."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError as err:
        return f"llama-cpp-python is not installed ({err})"
    return None


@dataclass
class LlamaSeq:
    """One sequence of a LlamaCppRunner's context (Cache interface).

    crop() only lowers num_tokens: llama.cpp's memory is touched by the thread that runs passes
    (the next pass, or release), never by a session's thread while a pass may be running.
    """

    pool: LlamaCppRunner
    slot: int  # the llama.cpp sequence id; -1 once released
    num_tokens: int = 0
    held: int = 0  # positions llama.cpp's memory holds for this sequence (>= num_tokens)

    def crop(self, num_tokens: int) -> None:
        self.num_tokens = min(self.num_tokens, num_tokens)

    def release(self) -> None:
        if self.slot >= 0:
            self.pool.free(self)


class LlamaCppRunner:
    """A GGUF model in llama.cpp with a context for up to `max_sequences` sequences (ModelBackend)."""

    backend = "llamacpp"

    def __init__(self, path: str | Path, tokenizer, name: str = "model", threads: int | None = None,
                 context_tokens: int | None = None, max_sequences: int = 16):
        lc = _llama()
        self._lc, self._model, self._ctx, self._batch, self._batch_size = lc, None, None, None, 0
        self.path, self.tokenizer, self.name = Path(path), tokenizer, name
        self.info = GGUFInfo.read(self.path)
        if not 1 <= max_sequences <= MAX_SEQUENCES:
            raise ValueError(f"{name}: max_sequences must be in [1, {MAX_SEQUENCES}] on llama.cpp, got {max_sequences}")
        self._threads = threads or len(os.sched_getaffinity(0))
        mparams = lc.llama_model_default_params()
        mparams.n_gpu_layers = 0
        self._model = lc.llama_model_load_from_file(str(self.path).encode(), mparams)
        if not self._model:
            raise ValueError(f"{name}: llama.cpp cannot load {str(self.path)!r}")
        vocab = lc.llama_model_get_vocab(self._model)
        self.vocab_size = int(lc.llama_vocab_n_tokens(vocab))
        self.hidden_size = int(lc.llama_model_n_embd(self._model))
        # Positions are shared by every sequence of the context: at least MIN_CONTEXT even for a model
        # trained on fewer, so several sequences (a profile's, a worker's sessions) fit side by side.
        n_ctx = int(context_tokens or min(max(self.info.context_length, MIN_CONTEXT), DEFAULT_CONTEXT))
        cparams = lc.llama_context_default_params()
        cparams.n_ctx = cparams.n_batch = n_ctx  # one pass may feed a whole prompt
        cparams.n_ubatch = min(_UBATCH, n_ctx)
        cparams.n_seq_max = max_sequences
        cparams.n_threads = cparams.n_threads_batch = self._threads
        cparams.kv_unified = True  # sequences share the cells: a long one may use what short ones leave
        cparams.no_perf = True
        # Flash attention off, as llama_cpp.Llama has it by default: on a 2-core Xeon it made the 0.5B's
        # decode step 38 ms instead of 29 (its 9-token pass 143 ms instead of 100) and the 1.5B's no
        # faster; off, greedy tokens equal llama_cpp.Llama's own for the same file.
        cparams.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_DISABLED
        self._ctx = lc.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            lc.llama_model_free(self._model)
            self._model = None
            raise ValueError(f"{name}: llama.cpp cannot create a context of {n_ctx} positions for {str(self.path)!r}")
        self._memory = lc.llama_get_memory(self._ctx)
        self.capacity = int(lc.llama_n_ctx(self._ctx))  # positions, all sequences together
        self.max_context = min(self.info.context_length or self.capacity, self.capacity)
        # llama.cpp's own end-of-generation set (EOS, EOT and what its vocabulary marks so, e.g. Qwen's
        # <|endoftext|> beside <|im_end|>): where llama.cpp's server stops, rstitch stops.
        eog = {i for i in range(self.vocab_size) if lc.llama_vocab_is_eog(vocab, i)}
        eos = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
        self.eos_token_ids = frozenset(eos | eog)
        self.device = torch.device("cpu")
        self._free = list(range(max_sequences - 1, -1, -1))
        self._max_sequences = max_sequences

    # ---- what the profile is keyed by -------------------------------------------------------
    @property
    def model_id(self) -> str:
        return self.info.model_id

    @property
    def weights(self) -> str:
        return "gguf"

    @property
    def threads(self) -> int:
        return self._threads

    # ---- caches -------------------------------------------------------------------------------
    def new_cache(self) -> LlamaSeq:
        if not self._free:
            raise RuntimeError(f"{self.name}: all {self._max_sequences} llama.cpp sequences are in use")
        return LlamaSeq(self, self._free.pop())

    allocate = new_cache  # the runner is its own BatchPool: one context holds every sequence

    def release(self, cache: LlamaSeq) -> None:
        """The sequence is gone (ModelState.release): its id and KV cells go back."""
        cache.release()

    def free(self, seq: LlamaSeq) -> None:
        self._lc.llama_memory_seq_rm(self._memory, seq.slot, -1, -1)
        self._free.append(seq.slot)
        seq.slot, seq.num_tokens, seq.held = -1, 0, 0

    @property
    def slots_in_use(self) -> int:
        return self._max_sequences - len(self._free)

    def batch_pool(self) -> LlamaCppRunner:
        return self

    def batching_off_reason(self) -> str | None:
        return None

    def filled_cache(self, num_tokens: int, pool=None) -> LlamaSeq:
        """A sequence holding `num_tokens` real positions (llama.cpp has no cheaper way to make them)."""
        cache = (pool or self).allocate()
        if num_tokens:
            self.run([PassRequest(cache, [(i * 7919 + 13) % self.vocab_size for i in range(num_tokens)])])
        return cache

    # ---- passes -------------------------------------------------------------------------------
    def forward(self, cache: LlamaSeq, token_ids: Sequence[int], num_logits: int = 1,
                hidden: bool = False) -> ForwardOutput:
        """Feed `token_ids` at positions cache.num_tokens ...; logits [num_logits, V] of the last fed."""
        check_pass(self.name, cache, token_ids, num_logits)
        start = time.perf_counter()
        (logits, _), = self.run([PassRequest(cache, list(token_ids), num_logits, hidden)])
        return ForwardOutput(logits, None, time.perf_counter() - start)

    def run(self, requests: list[PassRequest]) -> list[tuple[torch.Tensor, None]]:
        """One llama_decode over every request's rows (BatchPool.run)."""
        if any(r.hidden for r in requests):
            raise ValueError(f"{self.name}: {HIDDEN_REFUSAL}")
        lc = self._lc
        for r in requests:
            if r.cache.slot < 0:
                raise ValueError(f"{self.name}: this cache was released")
            if r.cache.held > r.cache.num_tokens:  # rollbacks since the last pass
                lc.llama_memory_seq_rm(self._memory, r.cache.slot, r.cache.num_tokens, -1)
                r.cache.held = r.cache.num_tokens
        total = sum(len(r.token_ids) for r in requests)
        if total > self.capacity:
            raise ValueError(f"{self.name}: a pass of {total} tokens exceeds the context of {self.capacity}")
        batch = self._fill(requests, total)
        status = lc.llama_decode(self._ctx, batch)
        if status != 0:
            for r in requests:  # a failed decode may have kept some ubatches: back to the state before
                lc.llama_memory_seq_rm(self._memory, r.cache.slot, r.cache.num_tokens, -1)
            why = "no room left in the KV cache" if status == 1 else f"llama_decode returned {status}"
            raise RuntimeError(f"{self.name}: llama.cpp pass of {total} tokens failed: {why}")
        rows = sum(r.num_logits for r in requests)
        ptr = lc.llama_get_logits(self._ctx)
        logits = torch.from_numpy(np.ctypeslib.as_array(ptr, shape=(rows, self.vocab_size)).copy())  # [rows, V]
        results, start = [], 0
        for r in requests:
            results.append((logits[start:start + r.num_logits], None))
            start += r.num_logits
            r.cache.num_tokens += len(r.token_ids)
            r.cache.held = r.cache.num_tokens
        return results

    def _fill(self, requests: list[PassRequest], total: int):
        """The reusable llama_batch, holding every request's tokens at their own positions."""
        lc = self._lc
        if total > self._batch_size:
            if self._batch is not None:
                lc.llama_batch_free(self._batch)
            self._batch_size = max(total, 2 * self._batch_size, 64)
            self._batch = lc.llama_batch_init(self._batch_size, 0, 1)
        b, i = self._batch, 0
        for r in requests:
            n, first, seq = len(r.token_ids), r.cache.num_tokens, r.cache.slot
            for j, token in enumerate(r.token_ids):
                b.token[i] = token
                b.pos[i] = first + j
                b.n_seq_id[i] = 1
                b.seq_id[i][0] = seq
                b.logits[i] = j >= n - r.num_logits
                i += 1
        b.n_tokens = total
        return b

    def close(self) -> None:
        """Free the context and the model (also done when the runner is collected)."""
        lc = getattr(self, "_lc", None)
        if lc is None:
            return
        if self._batch is not None:
            lc.llama_batch_free(self._batch)
            self._batch = None
        if getattr(self, "_ctx", None):
            lc.llama_free(self._ctx)
            self._ctx = None
        if getattr(self, "_model", None):
            lc.llama_model_free(self._model)
            self._model = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown: the module may be gone already
            pass

