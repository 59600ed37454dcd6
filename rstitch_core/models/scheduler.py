"""A model (any backend) that many sequences call at once: their passes run together, one batch per step.

Each sequence keeps running the core's own phases (policies/phases.py) in its own
thread; its forward() call joins the next batched pass and blocks until that pass is done. A
scheduler thread runs the passes: it takes every pass submitted so far, and first waits (at most
`linger_s`) for the sequences of the previous pass to submit their next one, so a step does not
leave behind a sequence that is merely busy sampling its last token. A sequence whose turn has
ended says so (idle()), so nobody waits for it: a session waiting on the other model costs nothing.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable, Sequence

from rstitch_core.models.backend import Cache, ForwardOutput, ModelBackend, PassRequest, check_pass


@dataclass
class SchedulerStats:
    steps: int = 0
    rows: int = 0  # sequences summed over steps (rows / steps = mean batch size)
    tokens: int = 0  # tokens fed, padding excluded
    max_rows: int = 0
    lingers: int = 0  # steps that waited the whole linger for a sequence of the previous pass
    last_batch_rows: int = 1  # rows of the latest step (what the next draft is priced at)


class BatchedRunner:
    """Wraps a ModelBackend; forward() may be called from many threads and is batched across them."""

    def __init__(self, runner: ModelBackend, linger_s: float = 0.02,
                 on_step: Callable[[int, int, float], None] | None = None):
        """`on_step(sessions, tokens, seconds)` is called after each pass (metrics)."""
        self.base = runner
        self.linger_s = linger_s
        self.on_step = on_step
        self.pool = runner.batch_pool()
        self.stats = SchedulerStats()
        self._cond = threading.Condition()
        self._kv_lock = threading.Lock()  # the slot tensors change shape on growth
        self._pending: list[tuple[PassRequest, Future]] = []
        self._expected: set[int] = set()  # slots of the last pass that have not submitted again
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=f"{runner.name}-scheduler", daemon=True)
        self._thread.start()

    def __getattr__(self, name):  # model, tokenizer, vocab_size, max_context, ... of the wrapped runner
        return getattr(self.base, name)

    def new_cache(self) -> Cache:
        with self._kv_lock:
            return self.pool.allocate()

    def forward(self, cache: Cache, token_ids: Sequence[int], num_logits: int = 1,
                hidden: bool = False) -> ForwardOutput:
        """The backend's forward, run as part of the next batched pass (blocks until it is done)."""
        check_pass(self.base.name, cache, token_ids, num_logits)
        future: Future = Future()
        with self._cond:
            if self._closed:
                raise RuntimeError(f"{self.base.name}: the scheduler is closed")
            self._pending.append((PassRequest(cache, list(token_ids), num_logits, hidden), future))
            self._cond.notify_all()
        logits, last_hidden, seconds = future.result()
        return ForwardOutput(logits, last_hidden, seconds)

    def idle(self, cache: Cache) -> None:
        """`cache`'s sequence will not call forward() again soon (its turn ended): don't wait for it."""
        with self._cond:
            self._expected.discard(cache.slot)
            self._cond.notify_all()

    def release(self, cache: Cache) -> None:
        """The sequence is gone: free its slot."""
        self.idle(cache)
        with self._kv_lock:
            cache.release()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=5)

    def _next_batch(self) -> list[tuple[PassRequest, Future]] | None:
        with self._cond:
            self._cond.wait_for(lambda: self._pending or self._closed)
            if self._closed:
                return None
            if not self._cond.wait_for(lambda: self._expected <= {r.cache.slot for r, _ in self._pending},
                                       timeout=self.linger_s):
                self.stats.lingers += 1
            batch, self._pending = self._pending, []
            self._expected = set()
            return batch

    def _loop(self) -> None:
        while (batch := self._next_batch()) is not None:
            start = time.perf_counter()
            try:
                with self._kv_lock:
                    results = self.pool.run([r for r, _ in batch])
            except BaseException as err:  # noqa: BLE001 - every caller of this pass gets the error
                for _, future in batch:
                    future.set_exception(err)
                continue
            seconds = time.perf_counter() - start
            tokens = sum(len(r.token_ids) for r, _ in batch)
            s = self.stats
            s.steps, s.rows, s.max_rows = s.steps + 1, s.rows + len(batch), max(s.max_rows, len(batch))
            s.last_batch_rows = len(batch)
            s.tokens += tokens
            if self.on_step is not None:
                self.on_step(len(batch), tokens, seconds)
            with self._cond:
                self._expected = {r.cache.slot for r, _ in batch}
            for (_, future), (logits, last_hidden) in zip(batch, results):
                future.set_result((logits, last_hidden, seconds))
