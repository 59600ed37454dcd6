"""A worker's sessions: each request's KV cache and sequence mirror, held between the front end's
calls, least recently used first, evicted to stay within the worker's limits and freed when the
request ends. Plain Python, no Ray and no model: the worker (services.worker) is a thin shim over
this store and the core, and the store is tested on its own (tests/services/test_session_store.py).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable

import torch

from rstitch_core.config import RoutingParams, SamplingParams
from rstitch_core.events import ModelStats
from rstitch_core.policies.phases import Op
from rstitch_core.sampling import Sampler
from rstitch_core.sequence import ModelState, Sequence

# Released ids are remembered so that a call already in flight when its request was cancelled
# cannot bring the session back (ids are unique per request; the memory is bounded).
RELEASED_MEMORY = 65_536


@dataclass
class TurnCall:
    """One round trip from the front end: the whole sequence so far, how much of the worker's
    cache still matches it, and the op of the policy loop to run (None: a shadow prefill)."""

    session_id: str
    token_ids: list[int]  # prompt + generated so far
    prompt_len: int
    num_cached: int  # leading cached positions known to match token_ids (rollbacks lower it)
    sampling: SamplingParams
    routing: RoutingParams
    max_context: int
    eos_token_ids: frozenset[int]
    rng_state: torch.Tensor | None = None  # the request's sampler state (None when greedy)
    first: bool = True  # the front end's first call to this model for the session
    op: Op | None = None  # run(): the DraftOp (SLM) or VerifyOp (LLM)


class WorkerBusy(RuntimeError):
    """Every session slot of this worker is in use by a call in progress."""


class SessionReleased(RuntimeError):
    """A call arrived for a session whose request has already ended."""


@dataclass
class Session:
    seq: Sequence  # this worker's mirror of the sequence (text and stop state included)
    state: ModelState
    sampler: Sampler
    busy: bool = False  # a call holds it, or an abandoned call's forward pass is still running
    forward: Future | None = None  # the pass running on the executor thread, if any


@dataclass
class StoreCounters:
    rebuilds: int = 0  # calls that expected a held session and found none
    evictions: int = 0
    turns: int = 0


@dataclass
class SessionStore:
    """The sessions one worker holds. `new_session` builds an empty one for a call;
    `on_change(sessions, cached_tokens)` and `on_evict()` feed the worker's metrics."""

    name: str  # the worker's role, for messages
    max_sessions: int
    max_cached_tokens: int
    new_session: Callable[[TurnCall], Session]
    on_change: Callable[[int, int], None] = lambda sessions, cached_tokens: None
    on_evict: Callable[[], None] = lambda: None
    sessions: OrderedDict[str, Session] = field(default_factory=OrderedDict)  # least recently used first
    released: OrderedDict[str, None] = field(default_factory=OrderedDict)
    counters: StoreCounters = field(default_factory=StoreCounters)
    freed_at: float | None = None  # time.time() of the last release that freed a held session

    def checkout(self, call: TurnCall) -> tuple[Session, bool]:
        """The call's session, busy and brought in line with call.token_ids; created or rebuilt if
        needed (the bool: rebuilt, i.e. the front end expected it held). Raises SessionReleased
        for a request that has ended, WorkerBusy when every slot is mid-call."""
        if call.session_id in self.released:
            raise SessionReleased(f"session {call.session_id} was released (its request ended)")
        session = self.sessions.pop(call.session_id, None)
        # A session still busy belongs to an abandoned call whose forward pass may yet append to it:
        # never share it, rebuild instead.
        mirror_ok = (session is not None and not session.busy
                     and call.token_ids[:len(session.seq.token_ids)] == session.seq.token_ids)
        rebuilt = not mirror_ok and not call.first
        if not mirror_ok:
            if session is not None:
                free(session)
            self._make_room()
            session = self.new_session(call)
        session.state.rollback(min(session.state.num_cached, call.num_cached))
        session.seq.extend(call.token_ids[len(session.seq.token_ids):])
        if call.rng_state is not None:
            session.sampler.set_state(call.rng_state)
        session.state.stats = ModelStats(rebuilds=int(rebuilt))  # this call's work only
        session.busy = True
        self.sessions[call.session_id] = session  # most recently used
        self.counters.rebuilds += int(rebuilt)
        self.counters.turns += 1
        self._changed()
        return session, rebuilt

    def checkin(self, session: Session) -> None:
        """A call is over: the session is idle again (once a pass it abandoned is over), and the
        limits are enforced."""
        if session.forward is not None and not session.forward.done():
            session.forward.add_done_callback(lambda _: setattr(session, "busy", False))
        else:
            session.busy = False
        self._evict()
        self._changed()

    def release(self, session_id: str) -> bool:
        """Free a session (its request finished, failed or was cancelled). True if it was held."""
        self.released[session_id] = None
        if len(self.released) > RELEASED_MEMORY:
            self.released.popitem(last=False)
        session = self.sessions.pop(session_id, None)
        if session is not None:
            free(session)
            self.freed_at = time.time()
        self._changed()
        return session is not None

    def is_released(self, session_id: str) -> bool:
        return session_id in self.released

    def evict(self, session_id: str) -> bool:
        """Drop a session as LRU eviction would (its request may go on: the next call rebuilds it).
        True if it was held and idle."""
        session = self.sessions.get(session_id)
        if session is None or session.busy:
            return False
        self._drop(session_id)
        return True

    @property
    def cached_tokens(self) -> int:
        return sum(s.state.num_cached for s in self.sessions.values())

    def _evict(self) -> None:
        """Drop least recently used idle sessions until both limits hold."""
        while len(self.sessions) > self.max_sessions or self.cached_tokens > self.max_cached_tokens:
            victim = next((sid for sid, s in self.sessions.items() if not s.busy), None)
            if victim is None:
                return  # every session is mid-call; they shrink back when released
            self._drop(victim)

    def _make_room(self) -> None:
        """Evict idle sessions until a new one fits; WorkerBusy if every slot is mid-call."""
        while len(self.sessions) >= self.max_sessions:
            victim = next((sid for sid, s in self.sessions.items() if not s.busy), None)
            if victim is None:
                raise WorkerBusy(f"{self.name} worker holds {len(self.sessions)} sessions, all mid-call "
                                 f"(max_sessions={self.max_sessions})")
            self._drop(victim)

    def _drop(self, session_id: str) -> None:
        free(self.sessions.pop(session_id))
        self.counters.evictions += 1
        self.on_evict()
        self._changed()

    def _changed(self) -> None:
        self.on_change(len(self.sessions), self.cached_tokens)


def free(session: Session) -> None:
    """Release a discarded session's cache, once no forward pass of it is running any more."""
    if session.forward is not None and not session.forward.done():
        session.forward.add_done_callback(lambda _: session.state.release())
    else:
        session.state.release()
