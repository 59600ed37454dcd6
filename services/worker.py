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
from dataclasses import asdict, dataclass
from typing import AsyncIterator, Generator

import torch
from ray import serve

from rstitch_core.config import Policy
from rstitch_core.events import ModelStats, Source
from rstitch_core.logits_processors import prompt_logprobs_phase
from rstitch_core.models.backend import ForwardOutput, PassRequest
from rstitch_core.models.llamacpp import MAX_SEQUENCES as LLAMACPP_MAX_SEQUENCES
from rstitch_core.models.loading import BACKEND_CHOICES, load_model, resolve_backend
from rstitch_core.models.prefill import PrefillSpec
from rstitch_core.models.step_engine import DROPPED, Budget, StepEngine
from rstitch_core.policies.phases import run_phase
from rstitch_core.router import LearnedRouter
from rstitch_core.sampling import Sampler
from rstitch_core.sequence import ModelState, Sequence
from services.metrics import WorkerMetrics
from services.session_store import Session, SessionReleased, SessionStore, TurnCall, WorkerBusy

__all__ = ["LLMWorker", "ModelWorker", "SLMWorker", "SessionReleased", "TurnCall", "WorkerBusy", "WorkerConfig"]


# KV positions a llama.cpp worker allocates at start (all its sessions together): 65536 positions are
# 1.8 GB for the 1.5B in f16. The session store evicts idle sessions to stay within them.
LLAMACPP_MAX_CACHED_TOKENS = 65_536


@dataclass(frozen=True)
class WorkerConfig:
    """How a worker loads its model and bounds its memory."""

    weights: str | None  # folder, .gguf file or cached id; None: the embedded default pair's model for this role
    backend: str = "auto"  # torch | llamacpp | auto (resolved on the worker's node: models.loading.resolve_backend)
    dtype: str = "auto"  # torch: resolved on the worker's node (rstitch_core.models.loading.resolve_dtype)
    prefill: str = "off"  # "DTYPE[:N]": long passes on a copy in DTYPE (rstitch_core/models/prefill.py)
    device: str = "auto"  # "auto": the GPU Ray assigned this replica, else the CPU
    max_sessions: int = 64
    max_cached_tokens: int = 262_144
    threads: int | None = None  # CPU threads of a pass (torch or llama.cpp); None: every core this process may use
    router: str | None = None  # SLM only: an R-Stitch+ router file, consulted in rstitch+ turns
    batching: bool = True  # run concurrent sessions' passes as one batched pass per step
    max_batch_tokens: int = 8192  # tokens one step feeds (a longer single pass runs alone)

    def __post_init__(self) -> None:
        Budget(self.max_sessions, self.max_batch_tokens)  # raises ValueError quoting a bad value
        if not isinstance(self.max_sessions, int) or self.max_sessions < 1:
            raise ValueError(f"max_sessions must be an integer >= 1, got {self.max_sessions!r}")
        if not isinstance(self.max_cached_tokens, int) or self.max_cached_tokens < 1:
            raise ValueError(f"max_cached_tokens must be an integer >= 1, got {self.max_cached_tokens!r}")
        PrefillSpec.parse(self.prefill)  # raises ValueError quoting a bad value
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            raise ValueError(f"threads must be an integer >= 1, got {self.threads!r}")
        if self.backend not in BACKEND_CHOICES:
            raise ValueError(f"backend must be one of {', '.join(BACKEND_CHOICES)}, got {self.backend!r}")
        if self.backend == "llamacpp" and (self.dtype != "auto" or self.prefill != "off"):
            raise ValueError(f"dtype {self.dtype!r} / prefill {self.prefill!r}: the llama.cpp backend computes in the "
                             f"GGUF files' own quantization (leave dtype auto and prefill off, or use backend torch)")
        if self.backend == "llamacpp" and self.max_sessions > LLAMACPP_MAX_SEQUENCES:
            raise ValueError(f"max_sessions must be <= {LLAMACPP_MAX_SEQUENCES} on the llama.cpp backend (its sequence "
                             f"limit), got {self.max_sessions!r}")


@dataclass
class ShadowCounters:
    shadow_prefills: int = 0  # shadow prefill calls that fed tokens
    shadow_prefill_tokens: int = 0


class ModelWorker:
    """Serves one model for many sessions; one forward pass at a time on its own thread."""

    role: Source

    def __init__(self, config: WorkerConfig):
        self.config = config
        threads = config.threads or len(os.sched_getaffinity(0))
        torch.set_num_threads(threads)
        device = config.device
        if device == "auto":
            device = "cuda:0" if torch.cuda.is_available() else "cpu"
        backend = config.backend
        if backend == "auto":
            backend, _ = resolve_backend(backend, [config.weights or "default.gguf"], device)
        weights = resolve_model_weights(config.weights, self.role, backend)
        # llama.cpp allocates its KV memory up front: as many positions as the store may hold, bounded
        base = load_model(weights, config.dtype, device, name=self.role, prefill=PrefillSpec.parse(config.prefill),
                          backend=backend, threads=threads, max_sequences=config.max_sessions,
                          context_tokens=min(config.max_cached_tokens, LLAMACPP_MAX_CACHED_TOKENS))
        why_not = base.batching_off_reason() if config.batching else "batching is off"
        self.metrics = WorkerMetrics(self.role)
        self.model = base
        # One loop runs every session's passes (batched unless why_not); sessions have no thread.
        self.engine = StepEngine(base, Budget(config.max_sessions, config.max_batch_tokens), batched=why_not is None,
                                 on_step=self.metrics.step).start()
        self.batching_off_reason = why_not
        self.router = None
        if config.router is not None:
            if self.role != "slm":
                raise ValueError("a router runs in the SLM worker; give it to the SLM only")
            # Running it here, next to the hidden states, costs no extra round trip.
            self.router = LearnedRouter.load(config.router, slm=base)
        max_cached = min(config.max_cached_tokens, getattr(base, "capacity", config.max_cached_tokens))
        self.store = SessionStore(self.role, config.max_sessions, max_cached, self._new_session,
                                  on_change=self.metrics.state, on_evict=self.metrics.evicted)
        self.shadow_counters = ShadowCounters()
        self.replica = _replica_id() or "local"  # reported with each call: the front end batches releases by it

    async def info(self) -> dict:
        """What the front end needs to know about this model."""
        return {"role": self.role, "eos_token_ids": sorted(self.model.eos_token_ids),
                "router_tau": self.router.config.tau if self.router is not None else None,
                "max_context": self.model.max_context, "vocab_size": self.model.vocab_size,
                "device": str(self.model.device)}

    async def run(self, call: TurnCall) -> AsyncIterator[dict]:
        """Run call.op on this session's cache: stream each token it keeps as {"token", "source",
        "entropy"} and finish with {"end": True, "result": Drafted | Verdict, ...} (see _end).

        The engine runs the phase's passes back to back, each in the step that batches every
        session's waiting pass, while the tokens it kept are streamed: the next pass does not wait
        for the previous token to reach the front end (served over gRPC, that wait was ~25 ms of
        every 84 ms llama.cpp decode step, measured)."""
        session, rebuilt = self.store.checkout(call)
        task = None
        try:
            router = self.router if call.routing.policy is Policy.RSTITCH_PLUS else None
            phase = run_phase(call.op, session.seq, session.state, session.sampler, router)
            events, task = self._submit(session, phase, call.session_id)
            while True:
                done, value = await events.get()
                if not done:
                    yield {"token": value.token_id, "source": value.source, "entropy": value.entropy,
                           "logprob": value.logprob, "top_logprobs": value.top_logprobs}
                    continue
                if value is DROPPED:  # the session was released while its phase ran: no result
                    return
                if isinstance(value, BaseException):
                    raise value
                yield {**self._end(session, rebuilt), "result": value}
                return
        except asyncio.CancelledError:
            self._cancelled(call)
            raise
        finally:
            if task is not None:
                self.engine.cancel(task)  # a phase still running stops after its pass; checkin waits for that
            self.store.checkin(session)

    def _submit(self, session: Session, phase, session_id: str):
        """Hand `phase` to the engine; its tokens (False, event) and its end (True, result, error or
        DROPPED) arrive on the returned queue. Serve does not always cancel a call when the front
        end's request is cancelled (one it cancels ends in _cancelled): once the session is released
        (its request is over), no further pass runs for it."""
        loop, events = asyncio.get_running_loop(), asyncio.Queue()

        def hand(item) -> None:  # on the engine's thread
            if not loop.is_closed():  # else the call is long gone: nobody listens
                loop.call_soon_threadsafe(events.put_nowait, item)

        task = self.engine.submit(phase, on_event=lambda event: hand((False, event)),
                                  on_end=lambda value: hand((True, value)),
                                  alive=lambda: not self.store.is_released(session_id))
        session.forward = task.done
        return events, task

    async def prompt_logprobs(self, token_ids: list[int], top: int) -> list:
        """Each prompt token's log-probability under this model given those before it, with `top`
        alternatives (None for the first): one pass over the prompt on a cache of its own, outside
        any session (an echoed completion's prompt), scheduled in the engine's steps like any pass."""
        loop = asyncio.get_running_loop()
        ended = loop.create_future()

        def hand(value) -> None:  # on the engine's thread
            if not loop.is_closed():
                loop.call_soon_threadsafe(lambda: ended.done() or ended.set_result(value))

        task = self.engine.submit(prompt_logprobs_phase(self.engine, token_ids, top), lambda _: None, hand)
        try:
            value = await ended
        finally:
            self.engine.cancel(task)  # the client went away: the pass need not run
        if isinstance(value, BaseException):
            raise value
        return value

    async def prefill(self, call: TurnCall) -> dict:
        """Shadow prefill: feed what the cache lacks of the sequence, all but its last token, while
        the other model holds the turn, so that a later hand-over pass is about one token. The
        last token is left for that pass, which needs its logits."""
        reply = await self._one_pass(call, "fed", lambda s: _shadow_prefill(s.state, s.seq.token_ids))
        if reply["fed"]:
            self.shadow_counters.shadow_prefills += 1
            self.shadow_counters.shadow_prefill_tokens += reply["fed"]
            self.metrics.shadow(reply["fed"])
        return reply

    async def _one_pass(self, call: TurnCall, key: str, work) -> dict:
        """Run `work(session)` (a phase returning a value, e.g. a shadow prefill) on the engine."""
        session, rebuilt = self.store.checkout(call)
        task = None
        try:
            events, task = self._submit(session, work(session), call.session_id)
            done, result = await events.get()
            if isinstance(result, BaseException):
                raise result
            return {**self._end(session, rebuilt), key: 0 if result is DROPPED else result}
        except asyncio.CancelledError:
            self._cancelled(call)
            raise
        finally:
            if task is not None:
                self.engine.cancel(task)
            self.store.checkin(session)

    def _cancelled(self, call: TurnCall) -> None:
        """Serve cancels a worker call only when its request is over (the client went away, a
        deadline passed, the front end failed): free the session now instead of waiting for the
        front end's release call, which Serve routes behind every other call in a burst."""
        self.store.release(call.session_id)

    async def release(self, session_ids: list[str]) -> int:
        """Free these sessions' caches (their requests finished, failed or were cancelled); returns
        how many were held."""
        return sum(self.store.release(session_id) for session_id in session_ids)

    async def evict(self, session_id: str) -> bool:
        """Drop a session's cache as LRU eviction would (its request may go on: the next call
        rebuilds it). True if it was held and idle."""
        return self.store.evict(session_id)

    async def state(self) -> dict:
        """Sessions held, cached tokens and counters (for tests and metrics)."""
        import psutil  # installed with accelerate/ray

        store = self.store
        return {"role": self.role, "replica": self.replica, "sessions": len(store.sessions),
                "cached_tokens": store.cached_tokens, "session_ids": list(store.sessions),
                "freed_at": store.freed_at,
                "rss_bytes": psutil.Process().memory_info().rss, **asdict(store.counters),
                **asdict(self.shadow_counters),
                "batching": asdict(self.engine.stats) if self.batching_off_reason is None else None,
                "slots_in_use": self.engine.slots_in_use}

    def _new_session(self, call: TurnCall) -> Session:
        """An empty session for the call's request (the store brings it in line with the call)."""
        prompt = call.token_ids[:call.prompt_len]
        seq = Sequence.create(prompt, call.sampling, self.model.tokenizer, call.eos_token_ids, call.max_context)
        return Session(seq, ModelState(self.role, self.engine, ModelStats()), Sampler(call.sampling))

    def _end(self, session: Session, rebuilt: bool) -> dict:
        self.metrics.call(session.state.stats.prefill_tokens, rebuilt)
        return {"end": True, "num_cached": session.state.num_cached, "batch_rows": self._batch_rows(),
                "replica": self.replica,
                "stats": asdict(session.state.stats), "rebuilt": rebuilt,
                "rng_state": None if session.sampler.greedy else session.sampler.get_state()}

    def _batch_rows(self) -> int:
        """Rows in this worker's last batched pass (1 unbatched): what a draft is priced at."""
        return self.engine.stats.last_batch_rows if self.batching_off_reason is None else 1


def resolve_model_weights(weights: str | None, role: Source, backend: str = "torch") -> str:
    """`weights` as given, or for None the embedded default pair's model as `backend` runs it
    (assembled on this node)."""
    if weights is not None:
        return weights
    from rstitch_core.assets import ensure_default_pair  # only without weights: it imports the asset packages

    slm, llm = ensure_default_pair(progress=False, backend=backend)
    return str(slm if role == "slm" else llm)


def _replica_id() -> str | None:
    try:
        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # noqa: BLE001 - not running inside a Serve replica
        return None


def _shadow_prefill(state: ModelState, token_ids: list[int]) -> Generator[PassRequest, ForwardOutput, int]:
    """Feed token_ids[num_cached:-1] (if any) in one pass; returns how many tokens were fed."""
    fed = len(token_ids) - 1 - state.num_cached
    if fed > 0:
        yield from state.step(token_ids[:-1], turn_start=True)
    return max(fed, 0)


class SLMWorker(ModelWorker):
    role: Source = "slm"


class LLMWorker(ModelWorker):
    role: Source = "llm"
