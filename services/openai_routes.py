"""The HTTP API around the completions: vLLM's tokenizer endpoints (POST /tokenize, POST /detokenize,
GET /tokenizer_info, which evaluation harnesses probe for a remote tokenizer) and OpenAI error
objects for what the web framework would answer itself (404 unknown route, 405 wrong method,
415 a body that is not JSON)."""

from __future__ import annotations

import json

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from rstitch_core.prompts import encode_prompt
from services.openai_fields import chat_role
from services.openai_protocol import error_body

JSON_TYPES = ("application/json", "text/json")
# What /tokenizer_info reports of the tokenizer (vLLM reports its tokenizer config, as these keys).
_INFO_KEYS = ("bos_token", "eos_token", "pad_token", "unk_token", "chat_template", "model_max_length",
              "add_bos_token", "add_eos_token", "clean_up_tokenization_spaces")


class BadField(ValueError):
    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


def add_tokenizer_routes(app: FastAPI, frontend) -> None:
    """POST /tokenize, POST /detokenize and GET /tokenizer_info over the pair's tokenizer (vLLM's shapes)."""
    tokenizer = frontend.tokenizer

    async def tokenize(request: Request) -> JSONResponse:
        try:
            body = _body(await request.body())
            ids = _tokenize(tokenizer, body)
            pair = await frontend.pair_info()
        except BadField as err:
            return _error(400, str(err), err.param)
        return JSONResponse({"count": len(ids), "max_model_len": pair["max_context"], "tokens": ids,
                             "token_strs": None})

    async def detokenize(request: Request) -> JSONResponse:
        try:
            tokens = _body(await request.body()).get("tokens")
            pair = await frontend.pair_info()
            if not (isinstance(tokens, list) and all(_is_id(t, pair["vocab_size"]) for t in tokens)):
                raise BadField("tokens", f"tokens must be a list of token ids in [0, {pair['vocab_size']}), "
                                         f"got {tokens!r:.80}")
        except BadField as err:
            return _error(400, str(err), err.param)
        return JSONResponse({"prompt": tokenizer.decode(tokens)})

    async def tokenizer_info() -> JSONResponse:
        info = {"tokenizer_class": type(tokenizer).__name__}
        for key in _INFO_KEYS:
            value = getattr(tokenizer, key, None)
            if isinstance(value, (str, int, bool)) or value is None:
                info[key] = value
        return JSONResponse(info)

    app.add_api_route("/tokenize", tokenize, methods=["POST"])
    app.add_api_route("/detokenize", detokenize, methods=["POST"])
    app.add_api_route("/tokenizer_info", tokenizer_info, methods=["GET"])


def _tokenize(tokenizer, body: dict) -> list[int]:
    """vLLM's /tokenize: a prompt (add_special_tokens, default true) or chat messages rendered
    with the chat template (add_generation_prompt, default true)."""
    special = body.get("add_special_tokens")
    if special is not None and not isinstance(special, bool):
        raise BadField("add_special_tokens", f"add_special_tokens must be true or false, got {special!r:.80}")
    if "messages" in body:
        messages = body["messages"]
        if not isinstance(messages, list):
            raise BadField("messages", f"messages must be a list, got {messages!r:.80}")
        rendered = [{**m, "role": chat_role(i, m.get("role"), BadField)} if isinstance(m, dict) else m
                    for i, m in enumerate(messages)]
        generation = body.get("add_generation_prompt", True)
        try:
            text = tokenizer.apply_chat_template(rendered, tokenize=False, add_generation_prompt=bool(generation))
        except Exception as err:  # noqa: BLE001 - the template's own message says what is wrong
            raise BadField("messages", f"messages: the chat template refused them ({err})") from None
        return list(tokenizer(text, add_special_tokens=bool(special))["input_ids"])
    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        raise BadField("prompt", f"prompt (a string) or messages is required, got {prompt!r:.80}")
    if not prompt:
        return []
    try:
        return encode_prompt(tokenizer, prompt) if special is not False else list(
            tokenizer(prompt, add_special_tokens=False)["input_ids"])
    except ValueError:  # whitespace only: encode_prompt refuses it as a prompt, but it has tokens
        return list(tokenizer(prompt, add_special_tokens=special is not False)["input_ids"])


def _is_id(value, vocab_size: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < vocab_size


def _body(raw: bytes) -> dict:
    try:
        body = json.loads(raw)
    except ValueError as err:
        raise BadField(None, f"the request body is not valid JSON: {err}") from None
    if not isinstance(body, dict):
        raise BadField(None, f"the request body must be a JSON object, got {type(body).__name__}")
    return body


def _error(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, "invalid_request_error", param, code), status_code=status)


def add_error_handlers(app: FastAPI) -> None:
    """OpenAI error objects instead of the framework's {"detail": ...}: an unknown route (404), a
    route asked with the wrong method (405), a POST body declared as something other than JSON (415)."""

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        what = {404: f"no route {request.method} {request.url.path}; the API is under /v1 (see /v1/models)",
                405: f"{request.method} is not allowed on {request.url.path}"}.get(err.status_code, str(err.detail))
        response = _error(err.status_code, what, code={404: "not_found", 405: "method_not_allowed"}.get(err.status_code))
        if err.headers:
            response.headers.update(err.headers)  # 405's Allow
        return response

    @app.middleware("http")
    async def json_bodies(request: Request, call_next):
        kind = request.headers.get("content-type")
        if request.method == "POST" and kind and kind.split(";")[0].strip().lower() not in JSON_TYPES:
            return _error(415, f"the request body must be JSON (Content-Type: application/json), got Content-Type "
                               f"{kind!r:.80}", code="unsupported_media_type")
        return await call_next(request)
