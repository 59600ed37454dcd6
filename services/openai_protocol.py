"""OpenAI request bodies -> the core's configs: the twin of services.protocol's parse_request for
gRPC, with the same checks and messages (only the field path changes: `max_tokens` for
`sampling.max_new_tokens`, `rstitch.threshold` for `routing.threshold`). The events -> chunks
direction is in services.openai_api. Imports no ray and no web framework.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, fields, replace
from typing import Any, Literal

from rstitch_core.config import ConfigError, RoutingParams, SamplingParams
from rstitch_core.config import NoRouter as CoreNoRouter
from rstitch_core.prompts import validate_messages
from services import limits
from services.openai_fields import MAX_CHOICES, chat_role, controls, logprobs_field, n_choices, refuse_unsupported
from services.request_parsing import NoRouter, ParsedRequest

Endpoint = Literal["chat", "completion"]
UNSET_TEMPERATURE = 1.0  # OpenAI's default (gRPC's unset temperature is 0, greedy)


class FieldError(ValueError):
    """A bad request field: HTTP 400 naming `param` (None: the body as a whole)."""

    def __init__(self, param: str | None, message: str):
        super().__init__(message)
        self.param = param


def error_body(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict:
    """OpenAI's error object: what every OpenAI client parses for its exception's message."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class UnknownModel(FieldError):
    """`model` names something this server does not serve (HTTP 404, as OpenAI and vLLM answer)."""


Prompt = str | tuple[int, ...]  # text, or token ids


@dataclass(frozen=True)
class OpenAIRequest(ParsedRequest):
    """A validated OpenAI request: the core's terms plus how to answer it. A request may ask for
    several choices (n, a list of prompts): choices() gives one request per choice."""

    endpoint: Endpoint
    stream: bool
    include_usage: bool
    n: int = 1
    prompts: tuple[Prompt, ...] = ()  # completions: every prompt of the request
    token_ids: tuple[int, ...] | None = None  # this choice's prompt, given as token ids
    echo: bool = False  # completions: the prompt (and its logprobs) before the generated text
    index: int = 0  # this choice's index in the answer

    def encode(self, tokenizer) -> list[int]:
        return list(self.token_ids) if self.token_ids is not None else super().encode(tokenizer)

    def choices(self) -> list[OpenAIRequest]:
        """One request per choice, in vLLM's order (each prompt's n choices together). Choice j of
        a prompt samples with seed + j, so seeded choices differ yet are reproducible."""
        prompts = self.prompts or (self.prompt,)
        out = []
        for i, prompt in enumerate(prompts):
            for j in range(self.n):
                seed = None if self.sampling.seed is None else (self.sampling.seed + j) % 2**63
                text, ids = (prompt, None) if isinstance(prompt, str) or prompt is None else (None, prompt)
                out.append(replace(self, prompt=text, token_ids=ids, index=i * self.n + j,
                                   sampling=replace(self.sampling, seed=seed)))
        return out


def parse_openai(body: bytes, endpoint: Endpoint, model_id: str, max_context: int, default_threshold: float,
                 router_tau: float | None, vocab_size: int | None = None) -> OpenAIRequest:
    """Validate a /v1/chat/completions or /v1/completions body. Unknown fields are ignored (as
    vLLM does); a known one is honoured or refused (services.openai_fields): a bad or refused one
    raises FieldError naming it, rstitch+ without a router NoRouter."""
    req = _json_object(body)
    model = req.get("model")
    if model is not None and model != model_id:
        raise UnknownModel("model", f"model {model!r:.80} is not served here; GET /v1/models lists {model_id!r}")
    refuse_unsupported(req, endpoint, FieldError)
    n = n_choices(req, FieldError)
    stream = _optional_bool(req, "stream", False)
    options = req.get("stream_options")
    if options is not None and not (isinstance(options, dict) and stream):
        raise FieldError("stream_options", f"stream_options must be an object, sent with stream: true; got "
                                           f"{options!r:.80} with stream: {json.dumps(stream)}")
    include_usage = _optional_bool(options or {}, "include_usage", False, "stream_options.")
    prompts, messages = ((), _parse_chat(req)) if endpoint == "chat" else (_parse_prompts(req), None)
    if len(prompts or [None]) * n > MAX_CHOICES:
        raise FieldError("n", f"prompts x n must be <= {MAX_CHOICES} choices per request, got "
                              f"{len(prompts)} x {n}")
    prefix = "chatcmpl" if endpoint == "chat" else "cmpl"
    echo = endpoint == "completion" and _optional_bool(req, "echo", False)
    first = prompts[0] if prompts else None
    text, ids = (first, None) if first is None or isinstance(first, str) else (None, first)
    return OpenAIRequest(text, messages, _parse_sampling(req, max_context, endpoint, vocab_size),
                         _parse_routing(req.get("rstitch"), default_threshold, router_tau),
                         f"{prefix}-{uuid.uuid4().hex}", endpoint, stream, include_usage, n, prompts, ids, echo)


def _json_object(body: bytes) -> dict:
    _checked(None, lambda: limits.check_request_bytes(len(body), "the request body"))
    try:
        req = json.loads(body)
    except ValueError as err:  # UnicodeDecodeError included
        raise FieldError(None, f"the request body is not valid JSON: {err}") from None
    except RecursionError:
        raise FieldError(None, "the request body is nested too deeply") from None
    if not isinstance(req, dict):
        raise FieldError(None, f"the request body must be a JSON object, got {type(req).__name__}")
    return req


def _optional_bool(obj: dict, name: str, default: bool, path: str = "") -> bool:
    value = obj.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise FieldError(path + name, f"{path}{name} must be true or false, got {value!r:.80}")
    return value


def _parse_chat(req: dict) -> list[dict]:
    raw = req.get("messages")
    if raw is None:
        raise FieldError("messages", "messages is required")
    if isinstance(raw, list):
        _checked("messages", lambda: limits.check_messages(raw))
        raw = [_chat_message(i, m) for i, m in enumerate(raw)]
    return _checked("messages", lambda: validate_messages(raw))


def _chat_message(i: int, m: Any) -> Any:
    """role and content; content parts of type text are joined. Other keys (name, tool_calls, ...)
    are ignored like unknown fields."""
    if not isinstance(m, dict):
        return m  # validate_messages names it
    content = m.get("content")
    if isinstance(content, list):
        for j, part in enumerate(content):
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise FieldError(f"messages[{i}].content[{j}]", f"messages[{i}].content[{j}] must be a "
                                 f"text part {{'type': 'text', 'text': str}}, got {part!r:.80}")
        content = "".join(part["text"] for part in content)
    role = chat_role(i, m.get("role"), FieldError)
    return {k: v for k, v in (("role", role), ("content", content)) if k in m}


def _parse_prompts(req: dict) -> tuple[Prompt, ...]:
    """OpenAI's prompt forms: a string, token ids, or a list of either (a batch)."""
    prompt = req.get("prompt")
    batch = prompt if isinstance(prompt, list) and prompt and not _is_token(prompt[0]) else [prompt]
    out: list[Prompt] = []
    for i, p in enumerate(batch):
        param = "prompt" if len(batch) == 1 else f"prompt[{i}]"
        if isinstance(p, list) and p and all(_is_token(t) for t in p):
            _checked(param, lambda: limits.check_prompt(p, param))  # a token id counts as a character
            out.append(tuple(p))
            continue
        if not isinstance(p, str):
            raise FieldError(param, f"{param} must be a string, a list of token ids or a list of either, got {p!r:.80}")
        _checked(param, lambda: limits.check_prompt(p, param))
        if not p.strip():
            raise FieldError(param, f"{param} must be a non-empty string, got {p!r:.80}")
        out.append(p)
    return tuple(out)


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _parse_sampling(req: dict, max_context: int, endpoint: Endpoint, vocab_size: int | None) -> SamplingParams:
    """The core's SamplingParams, each field checked alone so its error names the OpenAI field."""
    budget = "max_completion_tokens" if req.get("max_completion_tokens") is not None else "max_tokens"
    stop = req.get("stop")
    stop = [stop] if isinstance(stop, str) else stop
    if stop is not None and not isinstance(stop, list):
        raise FieldError("stop", f"stop must be a string or a list of strings, got {stop!r:.80}")
    for i, s in enumerate(stop or []):
        if not isinstance(s, str) or not s:
            raise FieldError(f"stop[{i}]", f"stop[{i}] must be a non-empty string, got {s!r:.80}")
    _checked("stop", lambda: limits.check_stop(stop or [], "stop"))
    top_k = req.get("top_k")  # vLLM's extension; -1 is its "off"
    values = {"max_new_tokens": (budget, req.get(budget)), "temperature": ("temperature", req.get("temperature")),
              "top_p": ("top_p", req.get("top_p")), "top_k": ("top_k", 0 if top_k == -1 else top_k),
              "seed": ("seed", req.get("seed"))}
    for core, (param, value) in values.items():
        if value is not None:
            _sampling_field(core, param, value)
    budget_value = values["max_new_tokens"][1]
    if budget_value is not None and budget_value > max_context:
        raise FieldError(budget, f"{budget} must be <= {max_context} (the context window), got {budget_value}")
    chosen = {core: value for core, (_, value) in values.items() if value is not None}
    # Unset: the room left in the context window (vLLM's default), and OpenAI's temperature.
    chosen.setdefault("max_new_tokens", max_context)
    chosen.setdefault("temperature", UNSET_TEMPERATURE)
    chosen["logprobs"] = logprobs_field(req, endpoint, FieldError)
    chosen.update(controls(req, vocab_size, FieldError))
    try:
        return SamplingParams(**chosen, stop=tuple(stop or ()))
    except ConfigError as err:  # what only the fields together break (min_tokens above the budget)
        raise FieldError(err.field, str(err)) from None


def _sampling_field(core: str, param: str, value: Any) -> None:
    if isinstance(value, bool):
        raise FieldError(param, f"{param} must be a number, got {json.dumps(value)}")
    try:
        SamplingParams(**{core: value})
    except ConfigError as err:  # the core names its own field; the client knows it as `param`
        raise FieldError(param, str(err).replace(core, param, 1)) from None


def _parse_routing(ext: Any, default_threshold: float, router_tau: float | None) -> RoutingParams:
    """The "rstitch" extension object: any RoutingParams field, resolved as gRPC resolves routing."""
    if ext is None:
        ext = {}
    if not isinstance(ext, dict):
        accepted = [f.name for f in fields(RoutingParams)]
        raise FieldError("rstitch", f"rstitch must be an object with fields {accepted}, got {ext!r:.80}")
    try:
        return RoutingParams.resolve(router_tau, default_threshold, **ext)
    except CoreNoRouter:
        raise NoRouter("rstitch.policy rstitch+: this server holds no router; start it with --router PATH "
                       "(rstitch serve) or set router in the Serve config") from None
    except ConfigError as err:
        err = err.under("rstitch.")
        raise FieldError(err.field, str(err)) from None


def _checked(param: str | None, check, prefix: str = ""):
    """Run a shared check; its ValueError becomes a FieldError (message prefixed). The param is the
    path the message starts with when it names one below `param` (e.g. messages[2].role)."""
    try:
        return check()
    except ValueError as err:
        message = f"{prefix}{err}"
        head = message.split(" ", 1)[0].rstrip(":")
        named = param is not None and head.startswith(param) and head[len(param):][:1] in ("", ".", "[")
        raise FieldError(head if named else param, message) from None
