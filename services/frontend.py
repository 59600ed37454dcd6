"""The Serve ingress. One path validates a request, admits it under the concurrency limit, drives it
across the workers and streams the core's events (prepare -> stream); two front ends translate it:
gRPC `Generate` (here) and the OpenAI-compatible HTTP API (services.openai_api)."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Callable

import grpc
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

from rstitch.v1 import rstitch_pb2 as pb
from rstitch_core.config import DEFAULT_THRESHOLD
from rstitch_core.drafting.cost_aware import CostAwareControl
from rstitch_core.drafting.profile import CostProfile
from rstitch_core.drafting.windows import DraftWindows
from rstitch_core.events import Event, FinishEvent, SwitchEvent, TokenEvent
from rstitch_core.models.loading import check_tokenizers, load_tokenizer
from rstitch_core.prompts import check_request
from rstitch_core.sequence import Sequence
from services.grpc_api import RpcStatus
from services.metrics import BUSY, CANCELLED, ERROR, INVALID, FrontendMetrics, RequestRecorder
from services.protocol import finish_response, switch_response, tokens_response
from services.request_parsing import NoRouter, ParsedRequest, parse_request
from services.session import Releases, RemoteSession
from services.shutdown import Drain
from services.worker import WorkerBusy, resolve_model_weights

logger = logging.getLogger(__name__)


class ServerBusy(RuntimeError):
    """This front-end replica already runs max_concurrent_requests requests, or a worker has no free
    session slot (gRPC RESOURCE_EXHAUSTED, HTTP 429). The message is meant for the client."""


class WorkerUnavailable(RuntimeError):
    """A worker could not be reached, even after retries (gRPC UNAVAILABLE, HTTP 503)."""


@dataclass(frozen=True)
class Prepared:
    """A validated request, ready to stream: nothing is held for it yet."""

    request: ParsedRequest  # or a front end's subclass of it
    prompt_ids: list[int]
    pair: dict
    started: float


class Frontend:
    """Serve ingress for `rstitch.v1.RStitch` (the method name matches the RPC name); served, the
    OpenAI HTTP API is built over it too (services.app.ServedFrontend)."""

    def __init__(self, slm, llm, slm_source: str | None, llm_source: str | None, default_threshold: float = DEFAULT_THRESHOLD,
                 max_concurrent_requests: int = 64, shadow_prefill_tokens: int = 0, cost_profile: str | None = None,
                 served_model_name: str | None = None):
        self.handles = {"slm": slm, "llm": llm}
        self.releases = Releases(self.handles)
        self.default_threshold = default_threshold  # tau when a request leaves routing.threshold unset
        self.max_concurrent_requests = max_concurrent_requests
        self.active_requests = 0
        self.shadow_prefill_tokens = shadow_prefill_tokens  # see RemoteSession
        self.cost_profile = _load_cost_profile(cost_profile)
        self.draft_windows = DraftWindows()  # drafting or plain decoding, by measured throughput at each load
        sources = {m: resolve_model_weights(s, m) for m, s in (("slm", slm_source), ("llm", llm_source))}
        slm_tokenizer = load_tokenizer(sources["slm"], "slm")
        self.tokenizer = load_tokenizer(sources["llm"], "llm")
        check_tokenizers(slm_tokenizer, self.tokenizer)  # a mismatched pair never serves a token
        # The pair, as one model; by default an id that is also a valid Hugging Face repo name, which
        # harnesses may try to load a tokenizer by (a "+" in it made them fail before they fell back).
        self.model_id = served_model_name or default_model_name(_model_name(sources["slm"]), _model_name(sources["llm"]))
        self.metrics = FrontendMetrics()
        self._pair: dict | None = None
        self._pair_lock = asyncio.Lock()
        self._tokenizing = ThreadPoolExecutor(1, thread_name_prefix="rstitch-tokenize")  # see prepare
        self.drain_state = Drain(WorkerUnavailable)  # rstitch serve drains it on SIGTERM/SIGINT

    async def drain(self, grace_s: float) -> dict:
        """Refuse new requests, give those in flight `grace_s` to finish, then cut the rest with
        UNAVAILABLE (services.shutdown); returns what happened."""
        return await self.drain_state.drain(lambda: self.active_requests, grace_s)

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

    async def prepare(self, parse: Callable[[dict], ParsedRequest]) -> Prepared:
        """Validate a request that the front end parses with `parse(pair_info)`, and encode its prompt.
        Raises (counted as invalid) ValueError naming the field or NoRouter; WorkerUnavailable."""
        started = time.perf_counter()
        self.drain_state.check_admit()
        try:
            pair = await self.pair_info()
        except Exception as err:
            self.metrics.request("unknown").close(ERROR, time.perf_counter() - started)
            if (unavailable := as_unavailable(err)) is not None:
                raise unavailable from err
            raise
        try:
            # Parsing a 1 MiB body and tokenizing a long input take up to seconds of CPU: on the
            # event loop they would stall every stream's next token. One thread: a fast tokenizer
            # used from two threads at once fails ("Already borrowed").
            parsed, ids = await asyncio.get_running_loop().run_in_executor(self._tokenizing, self._encode, parse, pair)
        except ValueError:
            self.metrics.request("unknown").close(INVALID, time.perf_counter() - started)
            raise
        except NoRouter:
            self.metrics.request("rstitch+").close(INVALID, time.perf_counter() - started)
            raise
        return Prepared(parsed, ids, pair, started)

    def _encode(self, parse: Callable[[dict], ParsedRequest], pair: dict) -> tuple[ParsedRequest, list[int]]:
        parsed = parse(pair)
        ids = parsed.encode(self.tokenizer)
        check_request(ids, parsed.sampling.max_new_tokens, pair["max_context"], pair["vocab_size"])
        return parsed, ids

    async def stream(self, prepared: Prepared) -> AsyncIterator[Event]:
        """Admit a prepared request and stream its core events; however the stream ends (finished,
        failed, or closed or cancelled because the client went away) both workers drop the session.
        Raises ServerBusy, WorkerUnavailable, or any other exception (an internal error, logged)."""
        req, started = prepared.request, prepared.started
        record = self.metrics.request(req.routing.policy.value)
        if self.active_requests >= self.max_concurrent_requests:
            record.close(BUSY, time.perf_counter() - started)
            raise ServerBusy(f"server busy: {self.active_requests} requests in flight on this replica "
                             f"(max_concurrent_requests={self.max_concurrent_requests}); retry later")
        pair = prepared.pair
        seq = Sequence.create(prepared.prompt_ids, req.sampling, self.tokenizer, pair["eos_token_ids"],
                              pair["max_context"])
        session = RemoteSession(f"{req.request_id}-{uuid.uuid4().hex[:8]}", seq, req.routing, self.handles,
                                self.releases, self.shadow_prefill_tokens)
        if self.cost_profile is not None and req.routing.cost_aware:
            session.control = CostAwareControl(self.cost_profile, batch_rows=lambda: session.llm_batch_rows,
                                               windows=self.draft_windows, load=lambda: self.active_requests)
        self.active_requests += 1
        try:
            async for event in session.events():
                _record(record, event)
                if isinstance(event, TokenEvent):
                    self.draft_windows.emitted(1)
                self.drain_state.check_running()
                yield event
        except (asyncio.CancelledError, GeneratorExit):
            record.close(CANCELLED, time.perf_counter() - started)
            raise
        except WorkerUnavailable:  # cut by a drain (services.shutdown): nothing went wrong here
            record.close(ERROR, time.perf_counter() - started)
            raise
        except WorkerBusy as err:
            record.close(BUSY, time.perf_counter() - started)
            logger.warning("request %s: worker busy: %s", req.request_id, err)
            raise ServerBusy(f"server busy: {_own_message(err)}; retry later") from err
        except Exception as err:
            record.close(ERROR, time.perf_counter() - started)
            logger.error("request %s failed", req.request_id, exc_info=err)
            if (unavailable := as_unavailable(err)) is not None:
                raise unavailable from err
            raise
        finally:
            self.active_requests -= 1
            session.release()

    async def prompt_logprobs(self, prepared: Prepared, top: int) -> list:
        """The LLM's log-probability of each prompt token (None for the first) with `top`
        alternatives: an echoed completion's prompt. Raises WorkerUnavailable, or what the worker raised."""
        try:
            return await self.handles["llm"].prompt_logprobs.remote(prepared.prompt_ids, top)
        except Exception as err:
            if (unavailable := as_unavailable(err)) is not None:
                raise unavailable from err
            raise

    async def Generate(self, request: pb.GenerateRequest, grpc_context=None) -> AsyncIterator[pb.GenerateResponse]:
        """The gRPC front end: stream one generation; INVALID_ARGUMENT (naming the field) for a bad request."""
        rid = ""
        try:
            prepared = await self.prepare(lambda pair: parse_request(request, self.default_threshold,
                                                                     pair["router_tau"], pair["vocab_size"]))
            rid = prepared.request.request_id
            async with aclosing(self.stream(prepared)) as events:
                async for event in events:
                    if (response := _response(rid, event)) is not None:
                        yield response
        except Exception as err:
            _abort(grpc_context, *_grpc_status(err, rid))
            raise

    async def generate_stream(self, request: pb.GenerateRequest) -> AsyncIterator[pb.GenerateResponse | RpcStatus]:
        """Generate for a gRPC server outside this replica (services.grpc_server): the responses,
        then, if the request fails, an RpcStatus for that server to end the call with, instead of an
        exception (which Ray would wrap in its own text on the way)."""
        status = _StatusRecorder()
        try:
            async for response in self.Generate(request, status):
                yield response
        except Exception:  # noqa: BLE001 - Generate recorded the status the client sees (and logged the rest)
            yield RpcStatus(status.code or grpc.StatusCode.INTERNAL, status.details)


class _StatusRecorder:
    """The part of a gRPC context Generate sets on failure."""

    code: grpc.StatusCode | None = None
    details: str = ""

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details


def _record(record: RequestRecorder, event: Event) -> None:
    if isinstance(event, TokenEvent):
        record.token(event, time.perf_counter())
    elif isinstance(event, SwitchEvent):
        record.switch(event)
    elif isinstance(event, FinishEvent):
        record.finish(event)


def _response(rid: str, event: Event) -> pb.GenerateResponse | None:
    if isinstance(event, TokenEvent):
        return tokens_response(rid, [event])
    if isinstance(event, SwitchEvent):
        return switch_response(rid, event)
    if isinstance(event, FinishEvent):
        return finish_response(rid, event)
    return None


def _grpc_status(err: Exception, rid: str) -> tuple[grpc.StatusCode, str]:
    if isinstance(err, ValueError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(err)
    if isinstance(err, NoRouter):
        return grpc.StatusCode.FAILED_PRECONDITION, str(err)
    if isinstance(err, ServerBusy):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, str(err)
    if isinstance(err, WorkerUnavailable):
        return grpc.StatusCode.UNAVAILABLE, str(err)
    return grpc.StatusCode.INTERNAL, f"internal error in request {rid or '(unparsed)'}; the server log has the details"


def as_unavailable(err: Exception) -> WorkerUnavailable | None:
    """WorkerUnavailable for an error that says a worker cannot be reached (a replica lost beyond
    the session's retries, or no replica to take the call); None for any other error."""
    if isinstance(err, (RayActorError, ActorUnavailableError, BackPressureError, DeploymentUnavailableError)):
        return WorkerUnavailable(f"a worker is unavailable ({type(err).__name__}); retry later")
    return None


def default_model_name(slm: str, llm: str) -> str:
    """"SLM-LLM" in the characters a Hugging Face repo name allows (no "--" or "..", no "-" or "."
    at either end, at most 96 characters)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{slm}-{llm}")
    name = re.sub(r"[-.]{2,}", lambda m: m.group(0)[0], name)[:96].strip("-.")
    return name or "rstitch"


def _model_name(source: str) -> str:
    """A model's short name: its folder or file name without .gguf, or a hub id's last part."""
    name = Path(source.rstrip("/")).name
    return name.removesuffix(".gguf") or source


def _own_message(err: BaseException) -> str:
    """A worker exception's own one-line message. Ray wraps it (RayTaskError) in a text with ANSI
    colours, the actor id, pid, IP, paths and a traceback, which belong in the server log, not in
    what a client sees; the original message is its last line, after the exception's dotted name."""
    cause = getattr(err, "cause", None)
    if isinstance(cause, BaseException) and cause is not err:
        return _own_message(cause)
    text = str(err.args[0]) if err.args else ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    return re.sub(r"^(?:\w+\.)+\w+: ", "", _ANSI.sub("", lines[-1]))


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _abort(grpc_context, code: grpc.StatusCode, details: str) -> None:
    """Set the status the client will see; Serve applies it when the handler then raises (a stream
    that simply ended would be reported as OK)."""
    if grpc_context is not None:
        grpc_context.set_code(code)
        grpc_context.set_details(details)


def _load_cost_profile(path: str | None):
    """The serving cost profile (AppConfig.cost_profile), or None; logged so operators see it."""
    if path is None:
        return None
    profile = CostProfile.load(path)
    logger.info("cost profile %s (%s, %s): drafts are priced by it", path, profile.key.hardware, profile.key.dtype)
    return profile
