"""A GenerateRequest checked and turned into the core's configs: every field validated, bounded
(services.limits) and named in the error a client gets (INVALID_ARGUMENT). Server side only."""

from __future__ import annotations

import math
import struct
import uuid
from dataclasses import dataclass
from typing import Callable, TypeVar

from google.protobuf import unknown_fields

from rstitch.v1 import rstitch_pb2 as pb
from rstitch_core.config import DEFAULT_THRESHOLD, ConfigError, RoutingParams, SamplingParams
from rstitch_core.config import NoRouter as CoreNoRouter
from rstitch_core.prompts import encode_prompt, validate_messages
from services import limits
from services.protocol import ACCEPTANCES, POLICIES

T = TypeVar("T")


@dataclass(frozen=True)
class ParsedRequest:
    """A validated GenerateRequest in the core's terms: exactly one of prompt or messages is set."""

    prompt: str | None
    messages: list[dict] | None
    sampling: SamplingParams
    routing: RoutingParams
    request_id: str

    def encode(self, tokenizer) -> list[int]:
        """The prompt's token ids (ValueError for an empty prompt or one the template refuses)."""
        return encode_prompt(tokenizer, self.prompt, self.messages)


class NoRouter(RuntimeError):
    """An rstitch+ request reached a server that holds no router (FAILED_PRECONDITION)."""


def parse_request(req: pb.GenerateRequest, default_threshold: float | None = None,
                  router_tau: float | None = None, vocab_size: int | None = None) -> ParsedRequest:
    """Validate a request and fill unset optional fields with the core defaults
    (an unset routing.threshold with `default_threshold` when given: the server's tau). rstitch+
    runs at `router_tau`, the tau of the server's router (NoRouter when it has none).

    Raises ValueError whose message starts with the field path, e.g.
    "sampling.max_new_tokens must be an integer >= 1, got 0" (servers answer INVALID_ARGUMENT);
    sizes are bounded first (services.limits).
    """
    if isinstance(req, MalformedRequest):
        raise ValueError(f"request: {req.error}")
    _check_sizes(req)
    _reject_unknown_fields(req, "")
    prompt, messages = _parse_input(req)
    return ParsedRequest(prompt, messages, _parse_sampling(req.sampling, vocab_size),
                         _parse_routing(req.routing, default_threshold, router_tau), req.request_id or uuid.uuid4().hex)


@dataclass(frozen=True)
class MalformedRequest:
    """Stands in for a GenerateRequest whose bytes did not parse, so the router can answer
    INVALID_ARGUMENT instead of the gRPC layer's INTERNAL (see services.grpc_api)."""

    error: str


def _check_sizes(req: pb.GenerateRequest) -> None:
    """The bounds of services.limits, before anything is decoded further, tokenized or echoed."""
    limits.check_request_bytes(req.ByteSize())
    limits.check_request_id(req.request_id)
    if req.WhichOneof("input") == "prompt":
        limits.check_prompt(req.prompt)
    elif req.WhichOneof("input") == "messages":
        limits.check_messages([{"role": m.role, "content": m.content} for m in req.messages.messages])
    limits.check_stop(req.sampling.stop)


def _reject_unknown_fields(message, path: str) -> None:
    """A field this API does not define, or one sent with the wrong wire type (which protobuf
    keeps aside as unknown), is a client bug: name it rather than silently ignore it."""
    for field in unknown_fields.UnknownFieldSet(message):
        known = message.DESCRIPTOR.fields_by_number.get(field.field_number)
        what = (f"{path}{known.name} (field {field.field_number}) has the wrong wire type {field.wire_type}"
                if known else f"{path or 'request'}: unknown field number {field.field_number}")
        raise ValueError(what)
    for descriptor, value in message.ListFields():
        if descriptor.message_type is None or descriptor.message_type.GetOptions().map_entry:
            continue  # scalars, and maps of scalars (logit_bias): nothing nested to hide a field in
        items = value if descriptor.is_repeated else [value]
        for i, item in enumerate(items):
            index = f"[{i}]" if descriptor.is_repeated else ""
            _reject_unknown_fields(item, f"{path}{descriptor.name}{index}.")


def _parse_input(req: pb.GenerateRequest) -> tuple[str | None, list[dict] | None]:
    kind = req.WhichOneof("input")
    if kind is None:
        raise ValueError("prompt or messages is required")
    if kind == "prompt":
        if not req.prompt.strip():
            raise ValueError(f"prompt must be a non-empty string, got {req.prompt!r:.80}")
        return req.prompt, None
    raw = [{"role": m.role, "content": m.content} for m in req.messages.messages]
    # The core's messages start with "messages..."; the proto nests the list one level deeper.
    return None, _prefixed("messages.", lambda: validate_messages(raw))


def _parse_sampling(s: pb.SamplingParams, vocab_size: int | None = None) -> SamplingParams:
    for i, stop in enumerate(s.stop):
        if not stop:
            raise ValueError(f"sampling.stop[{i}] must be a non-empty string, got ''")
    if len(s.logit_bias) > limits.MAX_LOGIT_BIAS:
        raise ValueError(f"sampling.logit_bias holds at most {limits.MAX_LOGIT_BIAS} token ids, got {len(s.logit_bias)}")
    for token in s.logit_bias:
        if vocab_size is not None and token >= vocab_size:
            raise ValueError(f"sampling.logit_bias keys must be token ids in [0, {vocab_size}), got {token}")
    d = SamplingParams()
    return _prefixed("sampling.", lambda: SamplingParams(
        max_new_tokens=s.max_new_tokens if s.HasField("max_new_tokens") else d.max_new_tokens,
        temperature=_float32(s.temperature) if s.HasField("temperature") else d.temperature,
        top_p=_float32(s.top_p) if s.HasField("top_p") else d.top_p,
        top_k=s.top_k if s.HasField("top_k") else d.top_k,
        seed=s.seed if s.HasField("seed") else None,
        stop=tuple(s.stop),
        presence_penalty=_float32(s.presence_penalty) if s.HasField("presence_penalty") else d.presence_penalty,
        frequency_penalty=_float32(s.frequency_penalty) if s.HasField("frequency_penalty") else d.frequency_penalty,
        repetition_penalty=(_float32(s.repetition_penalty) if s.HasField("repetition_penalty")
                            else d.repetition_penalty),
        logit_bias=tuple((token, _float32(bias)) for token, bias in s.logit_bias.items()),
        min_p=_float32(s.min_p) if s.HasField("min_p") else d.min_p,
        min_tokens=s.min_tokens if s.HasField("min_tokens") else d.min_tokens,
        ignore_eos=s.ignore_eos if s.HasField("ignore_eos") else d.ignore_eos,
        logprobs=s.logprobs if s.HasField("logprobs") else None))


def _parse_routing(r: pb.RoutingParams, default_threshold: float | None, router_tau: float | None) -> RoutingParams:
    if r.policy not in POLICIES:
        accepted = ", ".join(f"{n} ({pb.Policy.Name(n)})" for n in POLICIES)
        raise ValueError(f"routing.policy: unknown value {r.policy}; accepted: {accepted}")
    if r.acceptance not in ACCEPTANCES:
        accepted = ", ".join(f"{n} ({pb.Acceptance.Name(n)})" for n in ACCEPTANCES)
        raise ValueError(f"routing.acceptance: unknown value {r.acceptance}; accepted: {accepted}")
    fields = {"policy": POLICIES[r.policy], "acceptance": ACCEPTANCES[r.acceptance],
              "threshold": _float32(r.threshold) if r.HasField("threshold") else None,
              "draft_tokens": r.draft_tokens if r.HasField("draft_tokens") else None,
              "relaxed_ratio": _float32(r.relaxed_ratio) if r.HasField("relaxed_ratio") else None}
    try:
        return _prefixed("routing.", lambda: RoutingParams.resolve(
            router_tau, DEFAULT_THRESHOLD if default_threshold is None else default_threshold, **fields))
    except CoreNoRouter:
        raise NoRouter("POLICY_RSTITCH_PLUS: this server holds no router; start it with --router PATH "
                       "(rstitch serve) or set router in the Serve config") from None


def _prefixed(path: str, build: Callable[[], T]) -> T:
    """Run a core validation and put the proto field path in front of its error (and its field)."""
    try:
        return build()
    except CoreNoRouter:
        raise
    except ConfigError as err:
        raise err.under(path) from None
    except ValueError as err:
        raise ValueError(f"{path}{err}") from None


def _float32(value: float) -> float:
    """The shortest decimal that is the same float32, so tau 0.02 on the wire is 0.02 in the engine
    (not 0.0199999995), and a client and a local run route on exactly the same threshold."""
    if not math.isfinite(value):
        return value
    bits = struct.pack("<f", value)
    for digits in range(1, 10):
        short = float(f"{value:.{digits}g}")
        if struct.pack("<f", short) == bits:
            return short
    return value
