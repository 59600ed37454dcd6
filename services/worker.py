"""SLM and LLM workers: one model each, holding their sessions' KV caches.

A call says "run this op of the policy loop for session S, given these tokens": the worker crops
its cache to what the front end knows matches, partially prefills only what it lacks and runs the
core's own phase (rstitch_core.policies.phases: the SLM drafts, the LLM verifies), streaming kept
tokens back as they are produced. A session the worker does not hold (evicted, restarted, another replica) is rebuilt
by prefilling everything: slower but correct, and counted. This module imports no Ray: Serve wraps
these classes in services/app.py, and tests can drive them directly.
"""

from __future__ import annotations

import asyncio
import os
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import AsyncIterator

import torch

from rstitch_core.config import Policy, RoutingParams, SamplingParams
from rstitch_core.events import ModelStats, Source
from rstitch_core.models.batched import supports_batching
from rstitch_core.models.loading import load_model
from rstitch_core.models.scheduler import BatchedRunner
from rstitch_core.policies.phases import Op, run_phase
from rstitch_core.sampling import Sampler
from rstitch_core.sequence import ModelState, Sequence
from services.metrics import WorkerMetrics


@dataclass(frozen=True)
class WorkerConfig:
    """How a worker loads its model and bounds its memory."""

    source: str | None  # None: the embedded default pair's model for this role
    dtype: str = "bfloat16"
    device: str = "auto"  # "auto": the GPU Ray assigned this replica, else the CPU
    max_sessions: int = 64
    max_cached_tokens: int = 262_144
    torch_threads: int | None = None  # None: every core this process may use
    router: str | None = None  # SLM only: an R-Stitch+ router file, consulted in rstitch+ turns
    batching: bool = True  # run concurrent sessions' passes as one batched pass per step
    batch_linger_s: float = 0.02  # how long a step waits for the previous step's sessions

    def __post_init__(self) -> None:
        if not isinstance(self.batch_linger_s, (int, float)) or not 0 <= self.batch_linger_s <= 1:
            raise ValueError(f"batch_linger_s must be a number of seconds in [0, 1], got {self.batch_linger_s!r}")
        if not isinstance(self.max_sessions, int) or self.max_sessions < 1:
            raise ValueError(f"max_sessions must be an integer >= 1, got {self.max_sessions!r}")
        if not isinstance(self.max_cached_tokens, int) or self.max_cached_tokens < 1:
            raise ValueError(f"max_cached_tokens must be an integer >= 1, got {self.max_cached_tokens!r}")
        if self.torch_threads is not None and (not isinstance(self.torch_threads, int) or self.torch_threads < 1):
            raise ValueError(f"torch_threads must be an integer >= 1, got {self.torch_threads!r}")


@dataclass
class TurnCall:
    """One round trip from the front end: the whole sequence so far, how much of our cache still
    matches it, and the op of the policy loop to run (None: a shadow prefill)."""

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


_RELEASED_MEMORY = 65_536


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
class WorkerCounters:
    rebuilds: int = 0
    evictions: int = 0
    turns: int = 0
    shadow_prefills: int = 0  # shadow prefill calls that fed tokens
    shadow_prefill_tokens: int = 0


class ModelWorker:
    """Serves one model for many sessions; one forward pass at a time on its own thread."""

    role: Source

    def __init__(self, config: WorkerConfig):
        self.config = config
        torch.set_num_threads(config.torch_threads or len(os.sched_getaffinity(0)))
        device = config.device
        if device == "auto":
            device = "cuda:0" if torch.cuda.is_available() else "cpu"
        base = load_model(resolve_model_source(config.source, self.role), config.dtype, device, name=self.role)
        why_not = supports_batching(base.model) if config.batching else "batching is off"
        # Batched: each session's loop runs in its own thread and blocks in forward() until the
        # scheduler's next batched pass; unbatched: one pass at a time on one thread.
        self.metrics = WorkerMetrics(self.role)
        self.runner = BatchedRunner(base, config.batch_linger_s, self.metrics.step) if why_not is None else base
        self.batching_off_reason = why_not
        self.router = None
        if config.router is not None:
            if self.role != "slm":
                raise ValueError("a router runs in the SLM worker; give it to the SLM only")
            from rstitch_core.router import LearnedRouter

            # Running it here, next to the hidden states, costs no extra round trip.
            self.router = LearnedRouter.load(config.router, slm=self.runner)
        self.sessions: OrderedDict[str, Session] = OrderedDict()  # least recently used first
        # Released ids, remembered so that a call already in flight when its request was cancelled
        # cannot bring the session back (ids are unique per request; the memory is bounded).
        self._released: OrderedDict[str, None] = OrderedDict()
        self.counters = WorkerCounters()
        # Forward passes block; running them off the event loop keeps streams, cancellations
        # and other sessions' calls flowing while a pass runs.
        threads = config.max_sessions if why_not is None else 1
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=f"{self.role}-session")

    async def info(self) -> dict:
        """What the router needs to know about this model."""
        return {"role": self.role, "eos_token_ids": sorted(self.runner.eos_token_ids),
                "router_tau": self.router.config.tau if self.router is not None else None,
                "max_context": self.runner.max_context, "vocab_size": self.runner.vocab_size,
                "device": str(self.runner.device)}

    async def run(self, call: TurnCall) -> AsyncIterator[dict]:
        """Run call.op on this session's cache: stream each token it keeps as {"token", "source",
        "entropy"} and finish with {"end": True, "result": Drafted | Verdict, ...} (see _end)."""
        session, rebuilt = self._checkout(call)
        try:
            gate = self.router if call.routing.policy is Policy.RSTITCH_PLUS else None
            phase = run_phase(call.op, session.seq, session.state, session.sampler, gate)
            # Serve does not cancel this call when the front end's request is cancelled: once the
            # session is released (its request is over) stop decoding for it at the next pass.
            while call.session_id not in self._released:
                done, value = await self._in_thread(session, _advance, phase)
                if done:
                    session.state.idle()
                    yield {**self._end(session, rebuilt), "result": value}
                    return
                yield {"token": value.token_id, "source": value.source, "entropy": value.entropy}
        finally:
            self._checkin(call.session_id, session)

    async def prefill(self, call: TurnCall) -> dict:
        """Shadow prefill: feed what the cache lacks of the sequence, all but its last token, while
        the other model holds the turn, so that a later hand-over pass is about one token. The
        last token is left for that pass, which needs its logits."""
        reply = await self._one_pass(call, "fed", lambda s: _shadow_prefill(s.state, s.seq.token_ids))
        if reply["fed"]:
            self.counters.shadow_prefills += 1
            self.counters.shadow_prefill_tokens += reply["fed"]
            self.metrics.shadow(reply["fed"])
        return reply

    async def _one_pass(self, call: TurnCall, key: str, work) -> dict:
        session, rebuilt = self._checkout(call)
        try:
            result = await self._in_thread(session, work, session)
            session.state.idle()
            return {**self._end(session, rebuilt), key: result}
        finally:
            self._checkin(call.session_id, session)

    async def release(self, session_id: str) -> bool:
        """Free a session's cache (request finished, failed or cancelled). True if it was held."""
        self._released[session_id] = None
        if len(self._released) > _RELEASED_MEMORY:
            self._released.popitem(last=False)
        session = self.sessions.pop(session_id, None)
        if session is not None:
            self._free(session)
        self._report()
        return session is not None

    async def evict(self, session_id: str) -> bool:
        """Drop a session's cache as LRU eviction would (its request may go on: the next call
        rebuilds it). True if it was held and idle."""
        session = self.sessions.get(session_id)
        if session is None or session.busy:
            return False
        self._drop(session_id)
        return True

    async def state(self) -> dict:
        """Sessions held, cached tokens and counters (for tests and metrics)."""
        import psutil  # installed with accelerate/ray

        return {"role": self.role, "replica": _replica_id(), "sessions": len(self.sessions),
                "cached_tokens": self._cached_tokens(), "session_ids": list(self.sessions),
                "rss_bytes": psutil.Process().memory_info().rss, **asdict(self.counters),
                "batching": asdict(self.runner.stats) if isinstance(self.runner, BatchedRunner) else None,
                "slots_in_use": self.runner.kv.slots_in_use if isinstance(self.runner, BatchedRunner) else None}

    # -- sessions ----------------------------------------------------------------------------

    def _checkout(self, call: TurnCall) -> tuple[Session, bool]:
        """The call's session, brought in line with call.token_ids; created or rebuilt if needed."""
        if call.session_id in self._released:
            raise SessionReleased(f"session {call.session_id} was released (its request ended)")
        session = self.sessions.pop(call.session_id, None)
        # A session still busy belongs to an abandoned call whose forward pass may yet append to it:
        # never share it, rebuild instead.
        mirror_ok = (session is not None and not session.busy
                     and call.token_ids[:len(session.seq.token_ids)] == session.seq.token_ids)
        rebuilt = not mirror_ok and not call.first  # the router expected a replica to hold it
        if not mirror_ok:
            if session is not None:
                self._free(session)
            self._make_room()
            session = self._new_session(call)
        session.state.rollback(min(session.state.num_cached, call.num_cached))
        session.seq.extend(call.token_ids[len(session.seq.token_ids):])
        if call.rng_state is not None:
            session.sampler.set_state(call.rng_state)
        session.state.stats = ModelStats(rebuilds=int(rebuilt))  # this call's work only
        session.busy = True
        self.sessions[call.session_id] = session  # most recently used
        self.counters.rebuilds += int(rebuilt)
        self.counters.turns += 1
        self._report()
        return session, rebuilt

    def _new_session(self, call: TurnCall) -> Session:
        prompt = call.token_ids[:call.prompt_len]
        seq = Sequence.create(prompt, call.sampling, self.runner.tokenizer, call.eos_token_ids, call.max_context)
        return Session(seq, ModelState(self.role, self.runner, ModelStats()), Sampler(call.sampling))

    def _checkin(self, session_id: str, session: Session) -> None:
        if session.forward is not None and not session.forward.done():
            # The call was cancelled mid-pass: the session stays busy until the pass is over.
            session.forward.add_done_callback(lambda _: setattr(session, "busy", False))
        else:
            session.busy = False
        self._evict()
        self._report()

    def _report(self) -> None:
        self.metrics.state(len(self.sessions), self._cached_tokens())

    def _end(self, session: Session, rebuilt: bool) -> dict:
        self.metrics.call(session.state.stats.prefill_tokens, rebuilt)
        return {"end": True, "num_cached": session.state.num_cached, "batch_rows": self._batch_rows(),
                "stats": asdict(session.state.stats), "rebuilt": rebuilt,
                "rng_state": None if session.sampler.greedy else session.sampler.get_state()}

    def _batch_rows(self) -> int:
        """Rows in this worker's last batched pass (1 unbatched): what a draft is priced at."""
        return self.runner.stats.last_batch_rows if isinstance(self.runner, BatchedRunner) else 1

    def _cached_tokens(self) -> int:
        return sum(s.state.num_cached for s in self.sessions.values())

    def _evict(self) -> None:
        """Drop least recently used idle sessions until both limits hold."""
        while len(self.sessions) > self.config.max_sessions or self._cached_tokens() > self.config.max_cached_tokens:
            victim = next((sid for sid, s in self.sessions.items() if not s.busy), None)
            if victim is None:
                return  # every session is mid-call; they shrink back when released
            self._drop(victim)

    def _make_room(self) -> None:
        """Evict idle sessions until a new one fits; WorkerBusy if every slot is mid-call."""
        while len(self.sessions) >= self.config.max_sessions:
            victim = next((sid for sid, s in self.sessions.items() if not s.busy), None)
            if victim is None:
                raise WorkerBusy(f"{self.role} worker holds {len(self.sessions)} sessions, all mid-call "
                                 f"(max_sessions={self.config.max_sessions})")
            self._drop(victim)

    def _free(self, session: Session) -> None:
        """Release a discarded session's cache, once no forward pass of it is running any more."""
        if session.forward is not None and not session.forward.done():
            session.forward.add_done_callback(lambda _: session.state.release())
        else:
            session.state.release()

    def _drop(self, session_id: str) -> None:
        self._free(self.sessions.pop(session_id))
        self.counters.evictions += 1
        self.metrics.evicted()
        self._report()

    async def _in_thread(self, session: Session, fn, *args):
        session.forward = self._executor.submit(fn, *args)
        return await asyncio.wrap_future(session.forward)


def resolve_model_source(source: str | None, role: Source) -> str:
    """A model source, or for None the embedded default pair's model (assembled on this node)."""
    if source is not None:
        return source
    from rstitch_core.assets import ensure_default_pair

    slm, llm = ensure_default_pair(progress=False)
    return str(slm if role == "slm" else llm)


def _replica_id() -> str | None:
    try:
        from ray import serve

        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # noqa: BLE001 - not running inside a Serve replica
        return None


def _shadow_prefill(state: ModelState, token_ids: list[int]) -> int:
    """Feed token_ids[num_cached:-1] (if any) in one pass; returns how many tokens were fed."""
    fed = len(token_ids) - 1 - state.num_cached
    if fed > 0:
        state.step(token_ids[:-1], turn_start=True)
    return max(fed, 0)


def _advance(turn) -> tuple[bool, object]:
    """next() that also returns the generator's return value: (done, event or return value)."""
    try:
        return False, next(turn)
    except StopIteration as stop:
        return True, stop.value


class SLMWorker(ModelWorker):
    role: Source = "slm"


class LLMWorker(ModelWorker):
    role: Source = "llm"
