"""OpenAI request bodies -> the core's configs: the twin of services.protocol's parse_request for
gRPC, with the same checks and messages (only the field path changes: `max_tokens` for
`sampling.max_new_tokens`, `rstitch.threshold` for `routing.threshold`). The events -> chunks
direction is in services.openai_api. Imports no ray and no web framework.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, fields
from enum import Enum
from typing import Any, Literal

from rstitch_core.config import Policy, RoutingParams, SamplingParams
from rstitch_core.prompts import validate_messages
from services import limits
from services.request_parsing import NoRouter, ParsedRequest

Endpoint = Literal["chat", "completion"]
UNSET_TEMPERATURE = 1.0  # OpenAI's default (gRPC's unset temperature is 0, greedy)


class FieldError(ValueError):
    """A bad request field: HTTP 400 naming `param` (None: the body as a whole)."""

    def __init__(self, param: str | None, message: str):
        super().__init__(message)
        self.param = param


class UnknownModel(FieldError):
    """`model` names something this server does not serve (HTTP 404, as OpenAI and vLLM answer)."""


@dataclass(frozen=True)
class OpenAIRequest(ParsedRequest):
    """A validated OpenAI request: the core's terms plus how to answer it."""

    endpoint: Endpoint
    stream: bool
    include_usage: bool


def parse_openai(body: bytes, endpoint: Endpoint, model_id: str, max_context: int, default_threshold: float,
                 router_tau: float | None) -> OpenAIRequest:
    """Validate a /v1/chat/completions or /v1/completions body. Unknown fields are ignored (as
    vLLM does); a bad known one raises FieldError naming it, rstitch+ without a router NoRouter."""
    req = _json_object(body)
    model = req.get("model")
    if model is not None and model != model_id:
        raise UnknownModel("model", f"model {model!r:.80} is not served here; GET /v1/models lists {model_id!r}")
    if req.get("n") not in (None, 1) or isinstance(req.get("n"), bool):  # True == 1 in Python
        raise FieldError("n", f"n must be 1 (one choice per request), got {req['n']!r:.80}")
    stream = _optional_bool(req, "stream", False)
    options = req.get("stream_options")
    if options is not None and not (isinstance(options, dict) and stream):
        raise FieldError("stream_options", f"stream_options must be an object, sent with stream: true; got "
                                           f"{options!r:.80} with stream: {json.dumps(stream)}")
    include_usage = _optional_bool(options or {}, "include_usage", False, "stream_options.")
    prompt, messages = _parse_chat(req) if endpoint == "chat" else _parse_prompt(req)
    prefix = "chatcmpl" if endpoint == "chat" else "cmpl"
    return OpenAIRequest(prompt, messages, _parse_sampling(req, max_context),
                         _parse_routing(req.get("rstitch"), default_threshold, router_tau),
                         f"{prefix}-{uuid.uuid4().hex}", endpoint, stream, include_usage)


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


def _parse_chat(req: dict) -> tuple[None, list[dict]]:
    raw = req.get("messages")
    if raw is None:
        raise FieldError("messages", "messages is required")
    if isinstance(raw, list):
        _checked("messages", lambda: limits.check_messages(raw))
        raw = [_chat_message(i, m) for i, m in enumerate(raw)]
    return None, _checked("messages", lambda: validate_messages(raw))


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
    return {k: v for k, v in (("role", m.get("role")), ("content", content)) if k in m}


def _parse_prompt(req: dict) -> tuple[str, None]:
    prompt = req.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]  # OpenAI's batch form, with one prompt
    if not isinstance(prompt, str):
        raise FieldError("prompt", f"prompt must be a string (or a list holding one string), got {prompt!r:.80}")
    _checked("prompt", lambda: limits.check_prompt(prompt, "prompt"))
    if not prompt.strip():
        raise FieldError("prompt", f"prompt must be a non-empty string, got {prompt!r:.80}")
    return prompt, None


def _parse_sampling(req: dict, max_context: int) -> SamplingParams:
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
    return SamplingParams(**chosen, stop=tuple(stop or ()))


def _sampling_field(core: str, param: str, value: Any) -> None:
    if isinstance(value, bool):
        raise FieldError(param, f"{param} must be a number, got {json.dumps(value)}")
    try:
        SamplingParams(**{core: value})
    except ValueError as err:
        raise FieldError(param, str(err).replace(core, param, 1)) from None


def _parse_routing(ext: Any, default_threshold: float, router_tau: float | None) -> RoutingParams:
    """The "rstitch" extension object: any RoutingParams field, checked as gRPC checks routing."""
    accepted = [f.name for f in fields(RoutingParams)]
    if ext is None:
        ext = {}
    if not isinstance(ext, dict):
        raise FieldError("rstitch", f"rstitch must be an object with fields {accepted}, got {ext!r:.80}")
    unknown = sorted(set(ext) - set(accepted))
    if unknown:
        raise FieldError("rstitch", f"rstitch: unknown field {unknown[0]!r}; accepted: {', '.join(accepted)}")
    values = {name: value for name, value in ext.items() if value is not None}
    defaults = RoutingParams()
    for name, value in values.items():
        default = getattr(defaults, name)
        if isinstance(default, Enum):  # policy, acceptance: their own parse names the accepted values
            values[name] = _checked(f"rstitch.{name}", lambda: type(default).parse(value), f"rstitch.{name}: ")
        else:
            _checked(f"rstitch.{name}", lambda: RoutingParams(**{name: value}), "rstitch.")
    threshold = default_threshold
    if values.get("policy") is Policy.RSTITCH_PLUS:
        if "threshold" in values:
            tau = "" if router_tau is None else f" = {router_tau:g}"
            raise FieldError("rstitch.threshold", f"rstitch.threshold must be unset for policy rstitch+ (it runs "
                                                  f"at its router's tau{tau}), got {values['threshold']!r:.80}")
        if router_tau is None:
            raise NoRouter("rstitch.policy rstitch+: this server holds no router; start it with --router PATH "
                           "(rstitch serve) or set router in the Serve config")
        threshold = router_tau
    return RoutingParams(**{"threshold": threshold, **values})


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
