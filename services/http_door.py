"""The HTTP API's door: what every request must pass before any work is done for it.

An ASGI wrapper around the OpenAI app (services.openai_api) that, in this order:
- checks the API key (`Authorization: Bearer KEY`, as vLLM and OpenAI clients send it) when the
  server has one (RSTITCH_API_KEY); /health stays open for probes;
- refuses a POST whose Content-Type is not JSON (415): a web page can send a cross-origin
  text/plain POST to a server on localhost without any preflight, but never an application/json one;
- refuses a body declared or found larger than services.limits.MAX_REQUEST_BYTES (413);
- reads the whole body within BODY_TIMEOUT_S (else 408), while at most MAX_INCOMPLETE requests of
  this replica are still being sent; beyond that only a body that arrives whole at once is read
  (else 429 at once, or after FIRST_CHUNK_TIMEOUT_S for one whose first bytes do not come). A client that sends a body slowly, or
  never finishes it, so holds a replica's place for seconds at most and only a few of them:
  the places (Serve's max_ongoing_requests) stay free for the requests that are complete.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os

from services.limits import MAX_REQUEST_BYTES

API_KEY_ENV = "RSTITCH_API_KEY"
BODY_TIMEOUT_S = 10.0
MAX_INCOMPLETE = 16
FIRST_CHUNK_TIMEOUT_S = 1.0  # once MAX_INCOMPLETE are being read: how long a body's first bytes may take
OPEN_PATHS = frozenset({"/health"})  # probes carry no key


def api_key_from_env() -> str | None:
    """The server's API key (RSTITCH_API_KEY; `rstitch serve --api-key` sets it), or None: no key."""
    return os.environ.get(API_KEY_ENV) or None


def key_matches(presented: str | None, key: str) -> bool:
    """Whether `presented` is `key` (constant time: the comparison leaks no prefix)."""
    return presented is not None and hmac.compare_digest(presented.encode(), key.encode())


class HTTPDoor:
    """ASGI middleware applying the checks above before the wrapped app sees a request."""

    def __init__(self, app, api_key: str | None = None, body_timeout_s: float = BODY_TIMEOUT_S,
                 max_incomplete: int = MAX_INCOMPLETE, max_body: int = MAX_REQUEST_BYTES):
        self.app, self.api_key = app, api_key
        self.body_timeout_s, self.max_incomplete, self.max_body = body_timeout_s, max_incomplete, max_body
        self.incomplete = 0  # requests whose body is being read (one event loop: no lock needed)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        refusal = self._refusal(scope, headers)
        if refusal is None and scope["method"] == "POST":
            refusal, receive = await self._read_body(headers, receive)
            if refusal is None and receive is None:  # the client went away while sending: nobody to answer
                return None
        if refusal is not None:
            return await _answer(send, *refusal)
        return await self.app(scope, receive, send)

    def _refusal(self, scope, headers: dict) -> tuple | None:
        if self.api_key is not None and scope["path"] not in OPEN_PATHS:
            auth = headers.get(b"authorization", b"").decode("latin-1")
            scheme, _, token = auth.partition(" ")
            if scheme.lower() != "bearer" or not key_matches(token.strip(), self.api_key):
                return (401, "invalid or missing API key: send the header 'Authorization: Bearer <key>'",
                        "invalid_request_error", "invalid_api_key", [(b"www-authenticate", b"Bearer")])
        if scope["method"] != "POST":
            return None
        media = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if media != b"application/json":
            return (415, f"Content-Type must be application/json, got {media.decode('latin-1')!r}",
                    "invalid_request_error", "unsupported_media_type")
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body):
            return _too_large(declared.decode("latin-1"), self.max_body)
        return None

    async def _read_body(self, headers: dict, receive) -> tuple:
        """(refusal or None, a receive that replays the body read whole, then the client's events);
        receive None: the client went away while sending."""
        if self.incomplete >= self.max_incomplete:
            # Full: a body that arrives whole in its first message is still served (a normal
            # request is), one that does not gets 429 at once, or after FIRST_CHUNK_TIMEOUT_S.
            try:
                body = await asyncio.wait_for(_body(receive, self.max_body, whole_first=True), FIRST_CHUNK_TIMEOUT_S)
            except (TimeoutError, _Incomplete):
                return (429, f"server busy: {self.incomplete} requests are still being sent to this replica "
                        f"(max {self.max_incomplete}); retry later", "rate_limit_error", "too_many_incomplete"), receive
            except _TooLarge as err:
                return _too_large(str(err), self.max_body), receive
            return None, None if body is None else _replay(body, receive)
        self.incomplete += 1
        try:
            body = await asyncio.wait_for(_body(receive, self.max_body), self.body_timeout_s)
        except TimeoutError:
            return (408, f"the request body was not received within {self.body_timeout_s:g} s",
                    "invalid_request_error", "request_timeout"), receive
        except _TooLarge as err:
            return _too_large(str(err), self.max_body), receive
        finally:
            self.incomplete -= 1
        return None, None if body is None else _replay(body, receive)


class _TooLarge(Exception):
    pass


class _Incomplete(Exception):
    pass


async def _body(receive, limit: int, whole_first: bool = False) -> bytes | None:
    """The whole body (None if the client went away); _Incomplete if `whole_first` and the first
    message does not hold all of it."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _TooLarge(f"more than {size}")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
        if whole_first:
            raise _Incomplete


def _replay(body: bytes, receive):
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # afterwards: the client's own events (a disconnect ends a stream)

    return replay


def _too_large(size: str, limit: int) -> tuple:
    return (413, f"the request body must be at most {limit} bytes, got {size}", "invalid_request_error",
            "request_too_large")


async def _answer(send, status: int, message: str, kind: str, code: str, extra_headers=()) -> None:
    """An OpenAI error object (the same shape as services.openai_api.error_body)."""
    body = json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close"), *extra_headers]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
