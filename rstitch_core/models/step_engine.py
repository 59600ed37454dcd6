"""A worker's stepped engine: one loop runs every session's passes, one batched pass per step.

A session's phase (policies/phases.py) is a generator that yields the tokens it keeps (TokenEvent)
and the pass it needs next (PassRequest), whose ForwardOutput is sent back into it. The engine
advances every phase until it asks for a pass, puts the waiting passes into one batch under a
budget (rows, tokens), runs it, hands each phase its output and advances it again: schedule ->
run -> postprocess, as nano-vllm's step(). Nothing waits on a timer and no session has a thread:
a phase that needs a pass is in the next step, and a session between calls costs nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from enum import Enum
from typing import Callable, Generator

import torch

from rstitch_core.events import TokenEvent
from rstitch_core.models.backend import Cache, ForwardOutput, ModelBackend, PassRequest, check_pass

logger = logging.getLogger(__name__)

Phase = Generator[TokenEvent | PassRequest, ForwardOutput | None, object]


class Dropped:
    """A task's end when it was cancelled (or its session released) before its phase finished."""

    def __repr__(self) -> str:
        return "DROPPED"


DROPPED = Dropped()


@dataclass(frozen=True)
class Budget:
    """What one step may run: at most `max_rows` sequences and `max_tokens` fed tokens (a single
    pass longer than max_tokens still runs, alone: the backends take a whole prompt in one pass)."""

    max_rows: int
    max_tokens: int = 8192

    def __post_init__(self) -> None:
        for name in ("max_rows", "max_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


class TaskStatus(Enum):
    NEW = "new"  # submitted, not yet advanced to its first pass
    WAITING = "waiting"  # its phase asked for a pass (task.request)
    FINISHED = "finished"  # ended: result, error or DROPPED given to on_end


@dataclass(eq=False)
class Task:
    """One phase the engine runs. `on_event` gets each kept token, `on_end` once the phase's result,
    its error or DROPPED; both run on the engine's thread. `done` resolves after on_end."""

    phase: Phase
    on_event: Callable[[TokenEvent], None]
    on_end: Callable[[object], None]
    alive: Callable[[], bool] = lambda: True  # False: drop the task (its session was released)
    status: TaskStatus = TaskStatus.NEW
    request: PassRequest | None = None
    cancelled: bool = False
    done: Future = field(default_factory=Future)

    @property
    def dropped(self) -> bool:
        return self.cancelled or not self.alive()


@dataclass
class StepStats:
    steps: int = 0
    rows: int = 0  # sequences summed over steps (rows / steps = mean batch size)
    tokens: int = 0  # tokens fed
    max_rows: int = 0
    deferred: int = 0  # waiting passes a step left to the next one (budget full)
    last_batch_rows: int = 1  # rows of the latest step (what the next draft is priced at)


class StepEngine:
    """Runs the phases submitted to it on `backend`, batched across sessions when `batched`.

    Use it either stepped by hand (`step()`, as tests do) or on its own thread (`start()`); a
    session's caches come from `new_cache()` / go back through `release()`, which any thread may call.
    """

    def __init__(self, backend: ModelBackend, budget: Budget, batched: bool = True,
                 on_step: Callable[[int, int, float], None] | None = None):
        """`on_step(rows, tokens, seconds)` is called after each pass (metrics)."""
        self.backend = backend
        self.pool = backend.batch_pool() if batched else None
        self.budget = budget if batched else Budget(1, budget.max_tokens)
        self.on_step = on_step
        self.stats = StepStats()
        self._pool_lock = threading.Lock()  # caches come and go on other threads; a pass reshapes the pool
        self._cond = threading.Condition()
        self._new: list[Task] = []  # submitted from any thread, taken by the engine's
        self._waiting: deque[Task] = deque()  # the engine thread's own: phases that asked for a pass
        self._closed = False
        self._thread: threading.Thread | None = None

    # caches: a ModelState's view of the engine (rstitch_core.sequence)
    def new_cache(self) -> Cache:
        with self._pool_lock:
            return self.pool.allocate() if self.pool is not None else self.backend.new_cache()

    def release(self, cache: Cache) -> None:
        with self._pool_lock:
            if self.pool is not None:
                cache.release()
            else:
                self.backend.release(cache)

    @property
    def slots_in_use(self) -> int | None:
        return self.pool.slots_in_use if self.pool is not None else None

    def submit(self, phase: Phase, on_event: Callable[[TokenEvent], None], on_end: Callable[[object], None],
               alive: Callable[[], bool] = lambda: True) -> Task:
        """Run `phase` from the next step on (any thread)."""
        task = Task(phase, on_event, on_end, alive)
        with self._cond:
            if self._closed:
                raise RuntimeError(f"{self.backend.name}: the engine is closed")
            self._new.append(task)
            self._cond.notify_all()
        return task

    def cancel(self, task: Task) -> None:
        """Stop running `task` (any thread): no pass of it starts after the current step."""
        task.cancelled = True

    @property
    def has_work(self) -> bool:
        return bool(self._new or self._waiting)

    def step(self) -> int:
        """Advance new phases to their first pass, run one batch, hand out its outputs; the rows run."""
        with self._cond:
            new, self._new = self._new, []
        for task in new:
            self._advance(task, None)
        batch = self._schedule()
        if not batch:
            return 0
        start = time.perf_counter()
        try:
            with self._pool_lock:
                outputs = self._run([t.request for t in batch])
        except BaseException as err:  # noqa: BLE001 - every phase in this pass gets the error
            for task in batch:
                self._end(task, err)
            return len(batch)
        seconds = time.perf_counter() - start
        tokens = sum(len(t.request.token_ids) for t in batch)
        s = self.stats
        s.steps, s.rows, s.tokens = s.steps + 1, s.rows + len(batch), s.tokens + tokens
        s.max_rows, s.last_batch_rows = max(s.max_rows, len(batch)), len(batch)
        if self.on_step is not None:
            try:
                self.on_step(len(batch), tokens, seconds)
            except Exception:  # noqa: BLE001 - a metrics hook must not strand this step's phases
                logger.exception("%s: on_step failed", self.backend.name)
        for task, (logits, hidden) in zip(batch, outputs):
            self._advance(task, ForwardOutput(logits, hidden, seconds))
        return len(batch)

    def start(self) -> StepEngine:
        """Step on a thread of the engine's own whenever a phase is submitted or waiting."""
        self._thread = threading.Thread(target=self._loop, name=f"{self.backend.name}-engine", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop the loop; phases still submitted or waiting end with an error."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
        for task in [*self._new, *self._waiting]:
            self._end(task, RuntimeError(f"{self.backend.name}: the engine closed"))
        self._new, self._waiting = [], deque()

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self.has_work or self._closed)
                if self._closed:
                    return
            try:
                self.step()
            except Exception:  # noqa: BLE001 - (a metrics hook failing) every other session keeps stepping
                logger.exception("%s: a step failed outside any pass", self.backend.name)

    def _schedule(self) -> list[Task]:
        """The waiting passes of the next step, oldest first, within the budget."""
        batch: list[Task] = []
        rest: deque[Task] = deque()
        tokens = 0
        while self._waiting:
            task = self._waiting.popleft()
            if task.dropped:
                self._drop(task)
                continue
            n = len(task.request.token_ids)
            if batch and (len(batch) >= self.budget.max_rows or tokens + n > self.budget.max_tokens):
                rest.append(task)
                continue
            batch.append(task)
            tokens += n
        self.stats.deferred += len(rest)
        self._waiting = rest  # those left over go first next step
        return batch

    def _run(self, requests: list[PassRequest]) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        if self.pool is not None:
            return self.pool.run(requests)
        return [(out.logits, out.hidden) for out in
                (self.backend.forward(r.cache, r.token_ids, r.num_logits, r.hidden) for r in requests)]

    def _advance(self, task: Task, reply: ForwardOutput | None) -> None:
        """Run `task`'s phase until it asks for a pass (then it waits) or ends."""
        while True:
            if task.dropped:
                self._drop(task)
                return
            try:
                item = task.phase.send(reply)
                if isinstance(item, PassRequest):
                    check_pass(self.backend.name, item.cache, item.token_ids, item.num_logits)
            except StopIteration as stop:
                self._end(task, stop.value)
                return
            except BaseException as err:  # noqa: BLE001 - the task's caller raises it
                self._end(task, err)
                return
            reply = None
            if isinstance(item, PassRequest):
                task.status, task.request = TaskStatus.WAITING, item
                self._waiting.append(task)
                return
            try:
                task.on_event(item)
            except BaseException as err:  # noqa: BLE001 - whoever listens is gone: end this task only
                self._end(task, err)
                return

    def _drop(self, task: Task) -> None:
        self._end(task, DROPPED)

    def _end(self, task: Task, value: object) -> None:
        if task.status is TaskStatus.FINISHED:
            return
        task.phase.close()  # a phase stopped at a pass request: its finally blocks run now
        task.status, task.request = TaskStatus.FINISHED, None
        try:
            task.on_end(value)
        except Exception:  # noqa: BLE001 - one listener's failure must not stop every session's steps
            logger.exception("%s: a task's on_end failed", self.backend.name)
        finally:
            task.done.set_result(None)


def run_inline(phase: Phase, backend: ModelBackend) -> Generator[TokenEvent, None, object]:
    """Drive `phase` alone: each pass it asks for runs on `backend` at once (in-process, no batching).
    Yields its tokens and returns its result."""
    reply: ForwardOutput | None = None
    while True:
        try:
            item = phase.send(reply)
        except StopIteration as stop:
            return stop.value
        reply = None
        if isinstance(item, PassRequest):
            reply = backend.forward(item.cache, item.token_ids, item.num_logits, item.hidden)
        else:
            yield item
