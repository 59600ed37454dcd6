"""One request driven across the two workers: the core's policy loop, each op run by its model's worker.

The front end keeps the authoritative Sequence (text, stop rules, stats) and drives
rstitch_core.policies.loop.decode, the same generator `rstitch generate` drives in-process; each
worker keeps its model's KV cache and a mirror of the sequence. Only token ids (and, for sampled
drafts, the draft distributions) travel; caches never do.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from dataclasses import replace
from typing import AsyncIterator

from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

from rstitch_core.events import Event, ModelStats, Source, TokenEvent
from rstitch_core.policies.acceptance import Draft
from rstitch_core.policies.loop import DraftControl, Handoff, Rollback, Steps, decode
from rstitch_core.policies.phases import Op, Result, VerifyOp
from rstitch_core.sampling import Sampler
from rstitch_core.sequence import Sequence
from services.session_store import TurnCall

logger = logging.getLogger(__name__)

# A call that fails because its replica died is retried, with backoff while Serve notices the loss
# and reroutes; the replica that takes over rebuilds the session from the token ids.
MAX_TURN_RETRIES = 6
RETRY_BACKOFF_S = 0.25


def _is_replica_failure(err: BaseException) -> bool:
    return isinstance(err, (RayActorError, ActorDiedError, ActorUnavailableError))


class RemoteSession:
    """Drives one sequence with its routing params across the SLM and LLM deployment handles."""

    def __init__(self, session_id: str, seq: Sequence, routing, handles: dict[Source, object],
                 releases: Releases, shadow_prefill_tokens: int = 0, control: DraftControl | None = None):
        """`releases` frees the session in the workers when the request ends.
        `shadow_prefill_tokens` > 0: while the SLM holds the turn, ask the LLM worker to prefill
        the SLM's tokens in the background once that many are unseen by it (0: never).
        `control`: the request's cost-aware draft control, if any."""
        self.session_id = session_id
        self.seq = seq
        self.routing = routing
        # session_id is not propagated downstream by Serve: set it on every worker call so the
        # consistent-hash request router keeps this session on one replica.
        self.handles = {m: h.options(session_id=session_id) for m, h in handles.items()}
        self.num_cached: dict[Source, int] = {"slm": 0, "llm": 0}  # cached positions known to match
        self.called: set[Source] = set()
        self.replicas: dict[Source, str] = {}  # the worker replica that answered each model's calls
        self.releases = releases
        sampler = Sampler(seq.sampling)
        self.rng_state = None if sampler.greedy else sampler.get_state()
        self.shadow_prefill_tokens = shadow_prefill_tokens if routing.policy.stitches else 0
        self.shadow: asyncio.Task | None = None  # the LLM worker's shadow prefill in flight
        self.control = control
        self.llm_batch_rows = 1  # rows in the LLM worker's last batched pass (prices drafts under load)

    async def events(self) -> AsyncIterator[Event]:
        """The request's events, as rstitch_core.policies.loop.run_local yields them in-process."""
        steps = Steps(decode(self.seq, self.routing, self.control))
        for step in steps:
            if isinstance(step, Rollback):
                # Rejected drafts stay in the workers' caches until their next call crops them.
                self.num_cached = {m: min(n, step.num_tokens) for m, n in self.num_cached.items()}
            elif isinstance(step, Handoff):
                if step.target == "llm":
                    await self._settle_shadow_prefill()  # its pass is the LLM's next one either way
                yield self.seq.switch(step.direction, self.num_cached[step.target], step.discarded)
            else:
                async for item in self._run(step):
                    if isinstance(item, TokenEvent):
                        yield item
                    else:
                        steps.result = item
        self.cancel_shadow_prefill()
        yield self.seq.finish()

    async def _run(self, op: Op) -> AsyncIterator[TokenEvent | Result]:
        """Run `op` on its model's worker: the tokens it keeps as they come, then its result."""
        model = op.model
        if model == "llm":
            await self._settle_shadow_prefill()
        for attempt in range(MAX_TURN_RETRIES + 1):
            streamed = False
            try:
                async for item in self.handles[model].options(stream=True).run.remote(self._call(model, op)):
                    if "token" in item:
                        streamed = True
                        yield self.seq.append(item["token"], item["source"], item["entropy"],
                                              item.get("logprob"), item.get("top_logprobs"))
                        if model == "slm":
                            self._maybe_shadow_prefill()
                    else:
                        self._finish_call(model, item)
                        yield item["result"]
                return
            except Exception as err:  # noqa: BLE001 - only replica loss is retried
                await self._on_failure(model, err, attempt)
                if streamed and isinstance(op, VerifyOp):
                    op = replace(op, draft=Draft())  # its kept drafts are in; the rest are stale

    def _maybe_shadow_prefill(self) -> None:
        """Start a shadow prefill when the LLM lacks enough of the sequence and none is in flight.
        The sequence's last token stays unfed: the hand-over pass needs its logits."""
        unseen = len(self.seq.token_ids) - 1 - self.num_cached["llm"]
        if (self.shadow_prefill_tokens and unseen >= self.shadow_prefill_tokens and self.seq.running
                and (self.shadow is None or self.shadow.done())):
            self.shadow = asyncio.create_task(self._shadow_prefill(self._call("llm")))

    async def _shadow_prefill(self, call: TurnCall) -> None:
        try:
            reply = await self.handles["llm"].prefill.remote(call)
        except Exception as err:  # noqa: BLE001 - an optimisation: the hand-over pass prefills instead
            logger.info("session %s: shadow prefill failed (%s)", self.session_id, err)
            return
        # Only the cache position and the work done: the sampler state belongs to the turn in progress.
        self.num_cached["llm"] = reply["num_cached"]
        self.replicas["llm"] = reply["replica"]
        self._add_stats("llm", reply["stats"])

    async def _settle_shadow_prefill(self) -> None:
        """Wait for a shadow prefill in flight: the worker holds the session until it is done."""
        if self.shadow is not None:
            await self.shadow
            self.shadow = None

    def cancel_shadow_prefill(self) -> None:
        if self.shadow is not None and not self.shadow.done():
            self.shadow.cancel()
        self.shadow = None

    def _call(self, model: Source, op: Op | None = None) -> TurnCall:
        seq = self.seq
        first = model not in self.called
        self.called.add(model)
        return TurnCall(self.session_id, list(seq.token_ids), len(seq.prompt_ids), self.num_cached[model],
                        seq.sampling, self.routing, seq.max_context, seq.eos_token_ids, self.rng_state,
                        first, op)

    def _finish_call(self, model: Source, end: dict) -> None:
        """Fold a worker's end-of-call report into the request."""
        self.num_cached[model] = end["num_cached"]
        self.replicas[model] = end["replica"]
        if model == "llm":
            self.llm_batch_rows = end["batch_rows"]
        self.rng_state = end["rng_state"] if end["rng_state"] is not None else self.rng_state
        self._add_stats(model, end["stats"])

    def _add_stats(self, model: Source, work: dict) -> None:
        stats: ModelStats = self.seq.stats.model(model)
        for name, value in work.items():
            if name != "tokens":  # the front end counts emitted tokens itself, as it appends them
                setattr(stats, name, getattr(stats, name) + value)

    async def _on_failure(self, model: Source, err: Exception, attempt: int) -> None:
        if not _is_replica_failure(err) or attempt >= MAX_TURN_RETRIES:
            raise err
        logger.warning("session %s: %s worker lost (%s); rebuilding on another replica",
                       self.session_id, model, type(err).__name__)
        self.num_cached[model] = 0
        await asyncio.sleep(RETRY_BACKOFF_S * 2 ** attempt)

    def release(self) -> None:
        """Free the session in every worker it called, even when the request was cancelled."""
        self.cancel_shadow_prefill()
        self.releases.add(self.session_id, {m: self.replicas.get(m) for m in self.called})


class Releases:
    """Frees ended requests' sessions in the workers, fire and forget. Every release asked for in one
    turn of the event loop goes out as one call per worker replica: a burst of 30 cancels is then a
    few calls, not 60 that Serve routes one by one while the workers' passes hold their event loops
    (docs/results.md, "Disconnects"). The busier the loop, the bigger the batches."""

    def __init__(self, handles: dict[Source, object]):
        self.handles = handles
        self.pending: dict[tuple[Source, str], list[str]] = {}
        self.tasks: set[asyncio.Task] = set()  # keeps release calls alive until they finish

    def add(self, session_id: str, replicas: dict[Source, str | None]) -> None:
        """Queue `session_id`'s release in each model's worker: `replicas` maps the models it
        called to the replica that answered (None: no call has answered yet)."""
        if not self.pending:
            # An empty context: Serve cancels every call made in a cancelled request's context,
            # which would cancel exactly these releases when a client goes away.
            asyncio.get_running_loop().call_soon(self.flush, context=contextvars.Context())
        for model, replica in replicas.items():
            # Consistent hashing sends a call to its first session's replica: group by replica,
            # and a session whose replica is unknown gets a call of its own.
            self.pending.setdefault((model, replica or f"session:{session_id}"), []).append(session_id)

    def flush(self) -> None:
        pending, self.pending = self.pending, {}
        loop = asyncio.get_running_loop()
        for (model, _), session_ids in pending.items():
            handle = self.handles[model].options(session_id=session_ids[0])
            task = loop.create_task(_release(handle, session_ids), context=contextvars.Context())
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)


async def _release(handle, session_ids: list[str]) -> None:
    try:
        await handle.release.remote(session_ids)
    except Exception as err:  # noqa: BLE001 - a dead replica holds nothing to free
        logger.info("release of %s failed: %s", session_ids, err)
