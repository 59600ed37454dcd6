"""One request driven across the two workers: the policy loop of rstitch_core, one round trip per turn.

The router keeps the authoritative Sequence (text, stop rules, stats); each worker keeps its model's
KV cache and a mirror of the sequence. Only token ids (and, for sampled speculative decoding, the
draft distributions) travel; caches never do.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from typing import AsyncIterator

from rstitch_core.config import Policy
from rstitch_core.events import Event, ModelStats, Source
from rstitch_core.policies.speculative import accept
from rstitch_core.sampling import Sampler
from rstitch_core.sequence import Sequence
from services.worker import TurnCall

logger = logging.getLogger(__name__)

# A call that fails because its replica died is retried, with backoff while Serve notices the loss
# and reroutes; the replica that takes over rebuilds the session from the token ids.
MAX_TURN_RETRIES = 6
RETRY_BACKOFF_S = 0.25


def _is_replica_failure(err: BaseException) -> bool:
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

    return isinstance(err, (RayActorError, ActorDiedError, ActorUnavailableError))


class RemoteSession:
    """Drives one sequence with `policy` across the SLM and LLM deployment handles."""

    def __init__(self, session_id: str, seq: Sequence, routing, handles: dict[Source, object],
                 shadow_prefill_tokens: int = 0):
        """`shadow_prefill_tokens` > 0: while the SLM holds the turn, ask the LLM worker to prefill
        the SLM's tokens in the background once that many are unseen by it (0: never)."""
        self.session_id = session_id
        self.seq = seq
        self.routing = routing
        # session_id is not propagated downstream by Serve: set it on every worker call so the
        # consistent-hash request router keeps this session on one replica.
        self.handles = {m: h.options(session_id=session_id) for m, h in handles.items()}
        self.trusted: dict[Source, int] = {"slm": 0, "llm": 0}  # cached positions known to match
        self.called: set[Source] = set()
        sampler = Sampler(seq.sampling)
        self.rng_state = None if sampler.greedy else sampler.get_state()
        self.shadow_prefill_tokens = shadow_prefill_tokens if routing.policy.stitches else 0
        self.shadow: asyncio.Task | None = None  # the LLM worker's shadow prefill in flight

    def events(self) -> AsyncIterator[Event]:
        if self.routing.policy is Policy.SPECULATIVE:
            return self._speculate()
        return self._stitch()

    async def _stitch(self) -> AsyncIterator[Event]:
        """rstitch_core.policies.stitch.stitch, with each turn run by the model's worker."""
        active, other = ("llm", "slm") if self.routing.policy is Policy.LLM else ("slm", "llm")
        while self.seq.running:
            handoff = False
            for attempt in range(MAX_TURN_RETRIES + 1):
                try:
                    async for item in self.handles[active].options(stream=True).turn.remote(self._call(active)):
                        if "token" in item:
                            yield self.seq.append(item["token"], active, item["entropy"])
                            if active == "slm":
                                self._maybe_shadow_prefill()
                        else:
                            handoff = self._finish_call(active, item)
                    break
                except Exception as err:  # noqa: BLE001 - only replica loss is retried
                    await self._on_failure(active, err, attempt)
            if handoff:
                if other == "llm":
                    await self._settle_shadow_prefill()  # its pass is the LLM's next one either way
                yield self.seq.switch(f"{active}_to_{other}", self.trusted[other])
                active, other = other, active
        self.cancel_shadow_prefill()
        yield self.seq.finish()

    def _maybe_shadow_prefill(self) -> None:
        """Start a shadow prefill when the LLM lacks enough of the sequence and none is in flight.
        The sequence's last token stays unfed: the hand-over pass needs its logits."""
        unseen = len(self.seq.token_ids) - 1 - self.trusted["llm"]
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
        self.trusted["llm"] = reply["num_cached"]
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

    async def _speculate(self) -> AsyncIterator[Event]:
        """rstitch_core.policies.speculative.speculate: SLM worker drafts, LLM worker verifies."""
        while self.seq.running:
            base = len(self.seq.token_ids)
            num = min(self.routing.draft_tokens, self.seq.room)
            drafted = await self._retrying("slm", "draft", num_draft=num)
            verified = await self._retrying("llm", "verify", draft=drafted["draft"])
            emitted = accept(self.seq, drafted["draft"], verified["verdict"])
            # Rejected drafts stay in the workers' caches until their next call crops to `trusted`.
            kept = min(base + verified["verdict"].accepted, len(self.seq.token_ids))
            self.trusted = {m: min(n, kept) for m, n in self.trusted.items()}
            for event in emitted:
                yield event
        yield self.seq.finish()

    async def _retrying(self, model: Source, method: str, **extra) -> dict:
        for attempt in range(MAX_TURN_RETRIES + 1):
            try:
                reply = await getattr(self.handles[model], method).remote(self._call(model, **extra))
                self._finish_call(model, reply)
                return reply
            except Exception as err:  # noqa: BLE001 - only replica loss is retried
                await self._on_failure(model, err, attempt)
        raise AssertionError("unreachable")

    def _call(self, model: Source, **extra) -> TurnCall:
        seq = self.seq
        first = model not in self.called
        self.called.add(model)
        return TurnCall(self.session_id, list(seq.token_ids), len(seq.prompt_ids), self.trusted[model],
                        seq.sampling, self.routing, seq.max_context, seq.eos_token_ids, self.rng_state,
                        first, **extra)

    def _finish_call(self, model: Source, end: dict) -> bool:
        """Fold a worker's end-of-call report into the request; returns its handoff flag."""
        self.trusted[model] = end["num_cached"]
        self.rng_state = end["rng_state"] if end["rng_state"] is not None else self.rng_state
        self._add_stats(model, end["stats"])
        return end["handoff"]

    def _add_stats(self, model: Source, work: dict) -> None:
        stats: ModelStats = self.seq.stats.model(model)
        for name, value in work.items():
            if name != "tokens":  # the router counts emitted tokens itself, as it appends them
                setattr(stats, name, getattr(stats, name) + value)

    async def _on_failure(self, model: Source, err: Exception, attempt: int) -> None:
        if not _is_replica_failure(err) or attempt >= MAX_TURN_RETRIES:
            raise err
        logger.warning("session %s: %s worker lost (%s); rebuilding on another replica",
                       self.session_id, model, type(err).__name__)
        self.trusted[model] = 0
        await asyncio.sleep(RETRY_BACKOFF_S * 2 ** attempt)

    def release(self) -> None:
        """Free the session in both workers, even when the request was cancelled (fire and forget).

        The calls run in an empty context: Serve cancels every call made in a cancelled request's
        context, which would cancel exactly these releases when a client goes away."""
        self.cancel_shadow_prefill()
        loop = asyncio.get_running_loop()
        for handle in self.handles.values():
            task = loop.create_task(_release(handle, self.session_id), context=contextvars.Context())
            _PENDING.add(task)
            task.add_done_callback(_PENDING.discard)


_PENDING: set[asyncio.Future] = set()  # keeps release tasks alive until they finish


async def _release(handle, session_id: str) -> None:
    try:
        await handle.release.remote(session_id)
    except Exception as err:  # noqa: BLE001 - a dead replica holds nothing to free
        logger.info("release of %s failed: %s", session_id, err)
