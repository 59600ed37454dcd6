"""The OpenAI-compatible HTTP front end of the Frontend: /v1/chat/completions, /v1/completions (server-
sent events when `stream` is true), /v1/models and /health, on Serve's HTTP port beside gRPC (the
tokenizer endpoints and error handlers are in services.openai_routes).

Every request takes the Frontend's one path (prepare -> stream): the same validation, concurrency
limit, sessions, metrics and release as gRPC `Generate`. services.openai_protocol parses request
bodies; services.openai_writer turns each choice's core events into OpenAI chunks or a choice.
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

from rstitch_core.events import Event, FinishEvent
from services.frontend import Frontend, ServerBusy, WorkerUnavailable
from services.openai_protocol import Endpoint, FieldError, OpenAIRequest, UnknownModel, error_body, parse_openai
from services.openai_routes import add_error_handlers, add_tokenizer_routes
from services.openai_writer import ChoiceWriter, usage
from services.request_parsing import NoRouter

logger = logging.getLogger(__name__)
HEALTH_TIMEOUT_S = 5.0


def build_http_app(frontend: Frontend) -> FastAPI:
    """The FastAPI app of one Frontend replica (Serve's ingress calls it for every HTTP request)."""
    app = FastAPI(title="rstitch", summary="OpenAI-compatible API of an R-Stitch SLM/LLM pair",
                  docs_url=None, redoc_url=None)
    api = OpenAIFrontEnd(frontend)
    app.add_api_route("/health", api.health, methods=["GET"])
    app.add_api_route("/v1/models", api.models, methods=["GET"])
    app.add_api_route("/v1/chat/completions", api.chat, methods=["POST"])
    app.add_api_route("/v1/completions", api.completions, methods=["POST"])
    app.add_api_route("/v1/models/{model:path}", api.model, methods=["GET"])
    add_tokenizer_routes(app, frontend)
    add_error_handlers(app)
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
        return JSONResponse({"object": "list", "data": [self._model_card()]})

    async def model(self, model: str) -> Response:
        """GET /v1/models/{id}: the served model, or 404 naming the one served."""
        if model != self.frontend.model_id:
            return error_response(UnknownModel("model", f"model {model!r:.80} is not served here; GET /v1/models "
                                                        f"lists {self.frontend.model_id!r}"), None)
        return JSONResponse(self._model_card())

    def _model_card(self) -> dict:
        card = {"id": self.frontend.model_id, "object": "model", "created": 0, "owned_by": "rstitch"}
        if self.frontend._pair is not None:
            card["max_model_len"] = self.frontend._pair["max_context"]
        return card

    async def chat(self, request: Request) -> Response:
        return await self.complete(request, "chat")

    async def completions(self, request: Request) -> Response:
        return await self.complete(request, "completion")

    async def complete(self, request: Request, endpoint: Endpoint) -> Response:
        """One request, one generation per choice (n, a list of prompts): every choice's first
        event is awaited before answering, so that a request the front end or a worker turns away
        gets its own status code (429, 503) instead of a broken stream."""
        body = await request.body()
        frontend = self.frontend
        input_param = "messages" if endpoint == "chat" else "prompt"
        opened: list[AsyncIterator[Event]] = []
        streams: list[tuple[AsyncIterator[Event], Event]] = []  # each choice's events and its first one
        try:
            parsed = await frontend.prepare(lambda pair: parse_openai(
                body, endpoint, frontend.model_id, pair["max_context"], frontend.default_threshold, pair["router_tau"],
                pair["vocab_size"]))
            req: OpenAIRequest = parsed.request  # type: ignore[assignment] - parse_openai made it
            choices = req.choices()
            prepared = [parsed] if len(choices) == 1 else [await frontend.prepare(lambda _, c=c: c) for c in choices]
            envelope = self._envelope(req)
            writers = [await self._writer(p, envelope) for p in prepared]
            for p in prepared:
                events = frontend.stream(p)
                opened.append(events)
                streams.append((events, await anext(events)))
        except Exception as err:  # noqa: BLE001 - every failure becomes an OpenAI error object
            for events in opened:  # the choices already admitted give their sessions back
                await events.aclose()
            return error_response(err, input_param)
        prompt_tokens = sum(len(p.prompt_ids) for p in prepared[::req.n])  # each prompt once, as vLLM counts
        if req.stream:
            return ClosingStreamingResponse(_sse(req, envelope, writers, streams, prompt_tokens),
                                            media_type="text/event-stream")
        try:
            collected = await asyncio.gather(*(_collect(first, events) for events, first in streams))
        except Exception as err:  # noqa: BLE001
            return error_response(err, input_param)
        answer = {**envelope, "object": "chat.completion" if endpoint == "chat" else "text_completion",
                  "choices": [w.choice(events) for w, events in zip(writers, collected)]}
        answer["usage"] = usage([next(e for e in events if isinstance(e, FinishEvent)) for events in collected],
                                prompt_tokens)
        if len(writers) == 1:
            answer["rstitch"] = answer["choices"][0].pop("rstitch")  # one choice: at the top, as before n > 1
        return JSONResponse(answer)

    def _envelope(self, req: OpenAIRequest) -> dict:
        kind = "chat.completion.chunk" if req.endpoint == "chat" else "text_completion"
        return {"id": req.request_id, "object": kind, "created": int(time.time()), "model": self.frontend.model_id}

    async def _writer(self, prepared, envelope: dict) -> ChoiceWriter:
        """A choice's writer; an echoed completion's prompt text and, asked for, its logprobs (the LLM's)."""
        req: OpenAIRequest = prepared.request
        if not req.echo:
            return ChoiceWriter(req, envelope, self.frontend.tokenizer)
        ids = prepared.prompt_ids
        text = self.frontend.tokenizer.decode(ids, skip_special_tokens=False) if req.prompt is None else req.prompt
        top = req.sampling.logprobs
        logprobs = None if top is None else await self.frontend.prompt_logprobs(prepared, top)
        return ChoiceWriter(req, envelope, self.frontend.tokenizer, text, logprobs, ids)


async def _collect(first: Event, events: AsyncIterator[Event]) -> list[Event]:
    async with aclosing(events):
        return [first] + [event async for event in events]


async def _sse(req: OpenAIRequest, envelope: dict, writers: list[ChoiceWriter], streams: list,
               prompt_tokens: int) -> AsyncIterator[str]:
    """Server-sent events: a `data:` line per chunk (every choice's, as they come), usage last when
    asked, an error object if the stream fails after its start (the status line is gone by then,
    as in vLLM), and `data: [DONE]`."""
    finishes: list[FinishEvent] = []
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(writer: ChoiceWriter, first: Event, events: AsyncIterator[Event]) -> None:
        async with aclosing(events):
            async for event in _prepend(first, events):
                if isinstance(event, FinishEvent):
                    finishes.append(event)
                await queue.put(writer.add(event))

    tasks = [asyncio.ensure_future(pump(w, first, events)) for w, (events, first) in zip(writers, streams)]
    done = asyncio.gather(*tasks)
    try:
        while not (done.done() and queue.empty()):
            getter = asyncio.ensure_future(queue.get())
            await asyncio.wait([getter, done], return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                for chunk in getter.result():
                    yield _data(chunk)
            else:
                getter.cancel()
        done.result()  # raises a choice's failure
        if req.include_usage:
            yield _data({**envelope, "choices": [], "usage": usage(finishes, prompt_tokens)})
    except Exception as err:  # noqa: BLE001
        yield _data(error_status(err, None)[1])
    finally:
        for task in tasks:
            task.cancel()
    yield "data: [DONE]\n\n"


async def _prepend(first: Event, events: AsyncIterator[Event]) -> AsyncIterator[Event]:
    yield first
    async for event in events:
        yield event


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
