"""The OpenAI-compatible HTTP front end of the Frontend: /v1/chat/completions, /v1/completions (server-
sent events when `stream` is true), /v1/models and /health, on Serve's HTTP port beside gRPC.

Every request takes the Frontend's one path (prepare -> stream): the same validation, concurrency
limit, sessions, metrics and release as gRPC `Generate`. services.openai_protocol parses request
bodies; ResponseWriter (below) turns the core's events into OpenAI chunks or one response.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from contextlib import aclosing
from typing import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from rstitch_core.events import Event, FinishEvent, FinishReason, TokenEvent
from services.openai_protocol import Endpoint, FieldError, OpenAIRequest, UnknownModel, parse_openai
from services.request_parsing import NoRouter
from services.frontend import Frontend, ServerBusy, WorkerUnavailable

logger = logging.getLogger(__name__)
HEALTH_TIMEOUT_S = 5.0
# OpenAI knows two reasons: the model ended (EOS, a stop string) or a limit cut it (budget, context).
FINISH_REASONS = {FinishReason.EOS: "stop", FinishReason.STOP: "stop", FinishReason.LENGTH: "length",
                  FinishReason.CONTEXT: "length"}


def build_http_app(frontend: Frontend) -> FastAPI:
    """The FastAPI app of one Frontend replica (Serve's ingress calls it for every HTTP request)."""
    app = FastAPI(title="rstitch", summary="OpenAI-compatible API of an R-Stitch SLM/LLM pair",
                  docs_url=None, redoc_url=None)
    api = OpenAIFrontEnd(frontend)
    app.add_api_route("/health", api.health, methods=["GET"])
    app.add_api_route("/v1/models", api.models, methods=["GET"])
    app.add_api_route("/v1/chat/completions", api.chat, methods=["POST"])
    app.add_api_route("/v1/completions", api.completions, methods=["POST"])
    return app


class OpenAIFrontEnd:
    """The route handlers, over one Frontend."""

    def __init__(self, frontend: Frontend):
        self.frontend = frontend

    async def health(self) -> Response:
        """200 when both workers answer, 503 otherwise."""
        try:
            await asyncio.wait_for(asyncio.gather(*(h.info.remote() for h in self.frontend.handles.values())),
                                   HEALTH_TIMEOUT_S)
        except Exception as err:  # noqa: BLE001 - any failure to answer is "unavailable"
            return error_response(WorkerUnavailable(f"a worker is unavailable ({type(err).__name__})"), None)
        return JSONResponse({"status": "ok"})

    async def models(self) -> Response:
        model = {"id": self.frontend.model_id, "object": "model", "created": 0, "owned_by": "rstitch"}
        return JSONResponse({"object": "list", "data": [model]})

    async def chat(self, request: Request) -> Response:
        return await self.complete(request, "chat")

    async def completions(self, request: Request) -> Response:
        return await self.complete(request, "completion")

    async def complete(self, request: Request, endpoint: Endpoint) -> Response:
        """One generation: the first event is awaited before answering, so that a request the front end
        or a worker turns away gets its own status code (429, 503) instead of a broken stream."""
        body = await request.body()
        frontend = self.frontend
        input_param = "messages" if endpoint == "chat" else "prompt"
        try:
            prepared = await frontend.prepare(lambda pair: parse_openai(
                body, endpoint, frontend.model_id, pair["max_context"], frontend.default_threshold, pair["router_tau"]))
        except Exception as err:  # noqa: BLE001 - every failure becomes an OpenAI error object
            return error_response(err, input_param)
        req: OpenAIRequest = prepared.request  # type: ignore[assignment] - parse_openai made it
        events = frontend.stream(prepared)
        try:
            first = await anext(events)
        except Exception as err:  # noqa: BLE001
            return error_response(err, input_param)
        writer = ResponseWriter(req, frontend.model_id)
        if req.stream:
            return ClosingStreamingResponse(_sse(writer, first, events), media_type="text/event-stream")
        async with aclosing(events):
            try:
                collected = [first] + [event async for event in events]
            except Exception as err:  # noqa: BLE001
                return error_response(err, input_param)
        return JSONResponse(writer.response(collected))


async def _sse(writer: ResponseWriter, first: Event, events: AsyncIterator[Event]) -> AsyncIterator[str]:
    """Server-sent events: a `data:` line per chunk, an error object if the stream fails after its
    start (the status line is gone by then, as in vLLM), and `data: [DONE]`."""
    async with aclosing(events):
        try:
            for chunk in writer.add(first):
                yield _data(chunk)
            async for event in events:
                for chunk in writer.add(event):
                    yield _data(chunk)
        except Exception as err:  # noqa: BLE001
            yield _data(error_status(err, None)[1])
    yield "data: [DONE]\n\n"


def _data(chunk: dict) -> str:
    return f"data: {json.dumps(chunk, separators=(',', ':'))}\n\n"


class ClosingStreamingResponse(StreamingResponse):
    """A StreamingResponse that closes its body however the response ends. A client that goes away
    while a chunk is being sent cancels this task outside the body's generator, which is then left
    suspended; closing it now ends the front end's stream, which frees the session in both workers."""

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()


def error_response(err: Exception, input_param: str | None) -> JSONResponse:
    """The HTTP answer to an exception of the front end's path (see error_status)."""
    status, body = error_status(err, input_param)
    return JSONResponse(body, status_code=status)


def error_status(err: Exception, input_param: str | None) -> tuple[int, dict]:
    """The status and OpenAI error object for an exception of the front end's path. `input_param`
    names the prompt's field for a front-end check (a prompt longer than the context)."""
    if isinstance(err, UnknownModel):
        return 404, error_body(str(err), "invalid_request_error", err.param, "model_not_found")
    if isinstance(err, FieldError):
        return 400, error_body(str(err), "invalid_request_error", err.param, "invalid_value")
    if isinstance(err, ValueError):
        return 400, error_body(str(err), "invalid_request_error", input_param, "invalid_value")
    if isinstance(err, NoRouter):
        return 400, error_body(str(err), "invalid_request_error", "rstitch.policy", "no_router")
    if isinstance(err, ServerBusy):
        return 429, error_body(str(err), "rate_limit_error", code="server_busy")
    if isinstance(err, WorkerUnavailable):
        return 503, error_body(str(err), "service_unavailable_error", code="worker_unavailable")
    logger.error("HTTP request failed", exc_info=err)
    return 500, error_body(f"internal error ({type(err).__name__}); the server log has the details", "internal_error")


# ---- events -> OpenAI answers -------------------------------------------------------------------

def error_body(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict:
    """OpenAI's error object: what every OpenAI client parses for its exception's message."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def usage(finish: FinishEvent) -> dict:
    """OpenAI's usage, plus the LLM's share of the generated tokens and the switches between models."""
    s = finish.stats
    return {"prompt_tokens": s.prompt_tokens, "completion_tokens": s.generated_tokens,
            "total_tokens": s.prompt_tokens + s.generated_tokens, "llm_token_share": s.llm_token_share,
            "switches": s.switches_slm_to_llm + s.switches_llm_to_slm}


def token_fields(tokens: list[TokenEvent]) -> dict:
    """The "rstitch" extension of a chunk: which model wrote each of its tokens, at which entropy."""
    return {"token_ids": [t.token_id for t in tokens], "sources": [t.source for t in tokens],
            "entropies": [t.entropy for t in tokens]}


class ResponseWriter:
    """Core events -> OpenAI chunks (`add`) or one whole response (`response`), for one request."""

    def __init__(self, req: OpenAIRequest, model_id: str):
        self.req, self.model_id, self.created = req, model_id, int(time.time())
        self.pending: list[TokenEvent] = []  # tokens whose text is still held back (partial character or stop)
        self.started = False

    def add(self, event: Event) -> list[dict]:
        """The chunks one event completes: text as soon as it is final, tokens with their text."""
        out = []
        if not self.started and self.req.endpoint == "chat":
            out.append(self._chunk({"role": "assistant", "content": ""}))  # OpenAI's first chunk names the role
        self.started = True
        if isinstance(event, TokenEvent):
            self.pending.append(event)
            if event.text:
                out.append(self._chunk(self._delta(event.text), rstitch=token_fields(self.pending)))
                self.pending = []
        elif isinstance(event, FinishEvent):
            extension = {**token_fields(self.pending), "finish_reason": event.reason.value}
            out.append(self._chunk({} if self.req.endpoint == "chat" else self._delta(""),
                                   FINISH_REASONS.get(event.reason, "stop"), rstitch=extension))
            if self.req.include_usage:
                out.append({**self._envelope(), "choices": [], "usage": usage(event)})
        return out

    def response(self, events: list[Event]) -> dict:
        """The non-streaming answer: the whole text, usage, and every token's model and entropy."""
        finish = next(e for e in events if isinstance(e, FinishEvent))
        tokens = [e for e in events if isinstance(e, TokenEvent)]
        choice = ({"message": {"role": "assistant", "content": finish.text}} if self.req.endpoint == "chat"
                  else {"text": finish.text})
        body = self._envelope(chunk=False)
        body["choices"] = [{"index": 0, **choice, "logprobs": None,
                            "finish_reason": FINISH_REASONS.get(finish.reason, "stop")}]
        body["usage"] = usage(finish)
        body["rstitch"] = {**token_fields(tokens), "finish_reason": finish.reason.value}
        return body

    def _envelope(self, chunk: bool = True) -> dict:
        kind = {("chat", True): "chat.completion.chunk", ("chat", False): "chat.completion"}.get(
            (self.req.endpoint, chunk), "text_completion")
        return {"id": self.req.request_id, "object": kind, "created": self.created, "model": self.model_id}

    def _delta(self, text: str) -> dict:
        return {"content": text} if self.req.endpoint == "chat" else {"text": text}

    def _chunk(self, delta: dict, finish_reason: str | None = None, rstitch: dict | None = None) -> dict:
        choice = ({"index": 0, "delta": delta} if self.req.endpoint == "chat" else {"index": 0, **delta})
        choice.update(logprobs=None, finish_reason=finish_reason)
        chunk = {**self._envelope(), "choices": [choice]}
        if self.req.include_usage:
            chunk["usage"] = None  # OpenAI: every chunk but the last carries usage: null
        if rstitch is not None:
            chunk["rstitch"] = rstitch
        return chunk
