"""The gRPC entry: validates a request, drives it across the workers, streams every token at once."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import AsyncIterator

import grpc

from rstitch.v1 import rstitch_pb2 as pb
from rstitch_core.events import FinishEvent, SwitchEvent, TokenEvent
from rstitch_core.models.loading import check_tokenizers, load_tokenizer
from rstitch_core.prompts import check_prompt_ids, encode_prompt
from rstitch_core.sequence import Sequence
from services.metrics import BUSY, CANCELLED, ERROR, INVALID, RouterMetrics
from services.protocol import NoRouter, finish_response, parse_request, switch_response, tokens_response
from services.session import RemoteSession
from services.worker import WorkerBusy, resolve_model_source

logger = logging.getLogger(__name__)


class Router:
    """Serve ingress for `rstitch.v1.RStitch`; the method name matches the RPC name."""

    def __init__(self, slm, llm, slm_source: str | None, llm_source: str | None, default_threshold: float = 0.02,
                 max_concurrent_requests: int = 64, shadow_prefill_tokens: int = 0):
        self.handles = {"slm": slm, "llm": llm}
        self.default_threshold = default_threshold  # tau when a request leaves routing.threshold unset
        self.max_concurrent_requests = max_concurrent_requests
        self.active_requests = 0
        self.shadow_prefill_tokens = shadow_prefill_tokens  # see RemoteSession
        slm_tokenizer = load_tokenizer(resolve_model_source(slm_source, "slm"), "slm")
        self.tokenizer = load_tokenizer(resolve_model_source(llm_source, "llm"), "llm")
        check_tokenizers(slm_tokenizer, self.tokenizer)  # a mismatched pair never serves a token
        self.metrics = RouterMetrics()
        self._pair: dict | None = None
        self._pair_lock = asyncio.Lock()

    async def pair_info(self) -> dict:
        """Stop ids, context window and vocabulary shared by both workers (asked once)."""
        async with self._pair_lock:
            if self._pair is None:
                slm, llm = await asyncio.gather(self.handles["slm"].info.remote(), self.handles["llm"].info.remote())
                if slm["eos_token_ids"] != llm["eos_token_ids"]:
                    raise RuntimeError(f"incompatible models: the SLM stops on ids {slm['eos_token_ids']} "
                                       f"but the LLM on {llm['eos_token_ids']}")
                self._pair = {"eos_token_ids": frozenset(llm["eos_token_ids"]), "router_tau": slm.get("router_tau"),
                              "max_context": min(slm["max_context"], llm["max_context"]),
                              "vocab_size": min(slm["vocab_size"], llm["vocab_size"])}
            return self._pair

    async def Generate(self, request: pb.GenerateRequest, grpc_context=None) -> AsyncIterator[pb.GenerateResponse]:
        """Stream one generation; INVALID_ARGUMENT (naming the field) for a bad request."""
        started = time.perf_counter()
        pair = await self.pair_info()
        try:
            parsed = parse_request(request, self.default_threshold, pair["router_tau"])
            if parsed.sampling.max_new_tokens > pair["max_context"]:
                raise ValueError(f"sampling.max_new_tokens must be <= {pair['max_context']} (the context "
                                 f"window), got {parsed.sampling.max_new_tokens}")
            ids = encode_prompt(self.tokenizer, parsed.prompt, parsed.messages)
            check_prompt_ids(ids, pair["max_context"], pair["vocab_size"])
        except ValueError as err:
            self.metrics.request("unknown").close(INVALID, time.perf_counter() - started)
            _abort(grpc_context, grpc.StatusCode.INVALID_ARGUMENT, str(err))
            raise
        except NoRouter as err:
            self.metrics.request("rstitch+").close(INVALID, time.perf_counter() - started)
            _abort(grpc_context, grpc.StatusCode.FAILED_PRECONDITION, str(err))
            raise
        if self.active_requests >= self.max_concurrent_requests:
            self.metrics.request(parsed.routing.policy.value).close(BUSY, time.perf_counter() - started)
            message = (f"server busy: {self.active_requests} requests in flight on this replica "
                       f"(max_concurrent_requests={self.max_concurrent_requests}); retry later")
            _abort(grpc_context, grpc.StatusCode.RESOURCE_EXHAUSTED, message)
            raise ServerBusy(message)
        rid = parsed.request_id
        seq = Sequence.create(ids, parsed.sampling, self.tokenizer, pair["eos_token_ids"], pair["max_context"])
        session = RemoteSession(f"{rid}-{uuid.uuid4().hex[:8]}", seq, parsed.routing, self.handles,
                                self.shadow_prefill_tokens)
        record = self.metrics.request(parsed.routing.policy.value)
        self.active_requests += 1
        try:
            async for event in session.events():
                if isinstance(event, TokenEvent):
                    record.token(event, time.perf_counter())
                    yield tokens_response(rid, [event])
                elif isinstance(event, SwitchEvent):
                    record.switch(event)
                    yield switch_response(rid, event)
                elif isinstance(event, FinishEvent):
                    record.finish(event)
                    yield finish_response(rid, event)
        except asyncio.CancelledError:
            record.close(CANCELLED, time.perf_counter() - started)
            raise
        except WorkerBusy as err:
            record.close(BUSY, time.perf_counter() - started)
            _abort(grpc_context, grpc.StatusCode.RESOURCE_EXHAUSTED, f"server busy: {err}; retry later")
            raise
        except Exception:
            record.close(ERROR, time.perf_counter() - started)
            raise
        finally:
            self.active_requests -= 1
            # Finished, failed or cancelled (client gone): the workers drop the session's caches.
            session.release()


class ServerBusy(RuntimeError):
    """This router replica already runs max_concurrent_requests requests."""


def _abort(grpc_context, code: grpc.StatusCode, details: str) -> None:
    """Set the status the client will see; Serve applies it when the handler then raises (a stream
    that simply ended would be reported as OK)."""
    if grpc_context is not None:
        grpc_context.set_code(code)
        grpc_context.set_details(details)
