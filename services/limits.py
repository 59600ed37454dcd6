"""Size bounds on a generation request, shared by every API edge (gRPC today, HTTP next).

A server checks them before it tokenizes or echoes anything, so a careless or hostile client
cannot make it amplify a huge request id into every response, scan thousands of stop strings
per token, or render a chat of any length. Each check raises ValueError naming the field and
its bound (servers answer INVALID_ARGUMENT). Plain Python values only: no torch, no protobuf.
"""

from __future__ import annotations

from typing import Sequence

MAX_REQUEST_ID_BYTES = 128  # UTF-8; echoed in every response
MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 256  # per stop string
MAX_MESSAGES = 256
MAX_INPUT_CHARS = 262_144  # a prompt, or the roles and contents of all chat messages together
MAX_REQUEST_BYTES = 1_048_576  # the serialized request (gRPC) or body (HTTP)
MAX_LOGIT_BIAS = 1024  # token ids in one request's logit_bias: each is applied at every pass

LIMITS = {"request_id_bytes": MAX_REQUEST_ID_BYTES, "stop_strings": MAX_STOP_STRINGS,
          "stop_chars": MAX_STOP_CHARS, "messages": MAX_MESSAGES, "input_chars": MAX_INPUT_CHARS,
          "request_bytes": MAX_REQUEST_BYTES}


def check_request_bytes(size: int, field: str = "request") -> None:
    """The whole request, serialized, is at most MAX_REQUEST_BYTES."""
    if size > MAX_REQUEST_BYTES:
        raise ValueError(f"{field} must be at most {MAX_REQUEST_BYTES} bytes, got {size}")


def check_request_id(request_id: str, field: str = "request_id") -> None:
    """A client's request id is at most MAX_REQUEST_ID_BYTES of UTF-8."""
    size = len(request_id.encode("utf-8", "surrogatepass"))
    if size > MAX_REQUEST_ID_BYTES:
        raise ValueError(f"{field} must be at most {MAX_REQUEST_ID_BYTES} bytes (UTF-8), got {size}")


def check_stop(stop: Sequence[str], field: str = "sampling.stop") -> None:
    """At most MAX_STOP_STRINGS stop strings of at most MAX_STOP_CHARS characters each."""
    if len(stop) > MAX_STOP_STRINGS:
        raise ValueError(f"{field} must hold at most {MAX_STOP_STRINGS} strings, got {len(stop)}")
    for i, s in enumerate(stop):
        if len(s) > MAX_STOP_CHARS:
            raise ValueError(f"{field}[{i}] must be at most {MAX_STOP_CHARS} characters, got {len(s)}")
        check_unicode(s, f"{field}[{i}]")


def check_prompt(prompt, field: str = "prompt") -> None:
    """A raw prompt (a string, or any content form: text parts, token ids) is at most
    MAX_INPUT_CHARS characters (a token id counts as one), and valid Unicode."""
    size = input_size(prompt)
    if size > MAX_INPUT_CHARS:
        raise ValueError(f"{field} must be at most {MAX_INPUT_CHARS} characters, got {size}")
    check_unicode(prompt, field)


def check_messages(messages: Sequence[dict], field: str = "messages") -> None:
    """At most MAX_MESSAGES chat messages, whose roles and contents total at most MAX_INPUT_CHARS
    characters (checked before the messages' own validation, so only sizes are assumed)."""
    if len(messages) > MAX_MESSAGES:
        raise ValueError(f"{field} must hold at most {MAX_MESSAGES} messages, got {len(messages)}")
    total = sum(input_size(m.get("role")) + input_size(m.get("content")) for m in messages if isinstance(m, dict))
    if total > MAX_INPUT_CHARS:
        raise ValueError(f"{field}: roles and contents must total at most {MAX_INPUT_CHARS} characters, got {total}")
    for i, m in enumerate(messages):
        if isinstance(m, dict):
            check_unicode(m.get("role"), f"{field}[{i}].role")
            check_unicode(m.get("content"), f"{field}[{i}].content")


def input_size(value) -> int:
    """The size of an input in every form a client may send it: a string's characters, the texts of
    content parts ({"type": "text", "text": ...}), one per token id, nested lists summed. Counted
    before anything is joined or tokenized, so no form slips past MAX_INPUT_CHARS."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return input_size(value.get("text"))
    if isinstance(value, (list, tuple)):
        return sum(1 if isinstance(v, int) else input_size(v) for v in value)
    return 0


def check_unicode(value, field: str) -> None:
    """Text a tokenizer can take: no lone surrogate (JSON may carry "\\ud800"; tokenizers fail on it)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:
            raise ValueError(f"{field} must be valid Unicode text: a lone surrogate "
                             f"{value[err.start]!r} at character {err.start}") from None
    elif isinstance(value, (list, tuple)):
        for part in value:
            check_unicode(part.get("text") if isinstance(part, dict) else part, field)
