"""services.http_door on its own (an ASGI app behind it, no Ray): what is refused before any work."""

from __future__ import annotations

import asyncio
import json

import pytest

from services.http_door import HTTPDoor


class App:
    """The wrapped app: records the bodies it was given and answers 200."""

    def __init__(self):
        self.bodies: list[bytes] = []

    async def __call__(self, scope, receive, send):
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.bodies.append(body)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def scope(method="POST", path="/v1/chat/completions", headers=()):
    return {"type": "http", "method": method, "path": path, "headers": [(k.lower(), v) for k, v in headers]}


JSON = (b"content-type", b"application/json")


async def call(door, scope, chunks, complete=True):
    """(status, error object or None) of one request whose body arrives in `chunks` (then nothing
    more, when not `complete`)."""
    sent, pending = [], list(chunks)

    async def receive():
        if not pending:
            await asyncio.Event().wait()  # a client that never sends the rest
        chunk = pending.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(pending) or not complete}

    async def send(message):
        sent.append(message)

    await door(scope, receive, send)
    status = sent[0]["status"]
    body = sent[1]["body"]
    return status, (json.loads(body)["error"] if status != 200 else None)


def run(coroutine):
    return asyncio.run(coroutine)


def test_a_json_body_reaches_the_app_whole():
    app = App()
    status, _ = run(call(HTTPDoor(app), scope(headers=[JSON]), [b'{"a":', b' 1}']))
    assert status == 200 and app.bodies == [b'{"a": 1}']


@pytest.mark.parametrize("media", [b"text/plain", b"application/x-www-form-urlencoded", b"multipart/form-data", None])
def test_a_body_that_is_not_json_is_415(media):
    app = App()
    headers = [(b"content-type", media)] if media else []
    status, error = run(call(HTTPDoor(app), scope(headers=headers), [b"{}"]))
    assert status == 415 and error["code"] == "unsupported_media_type" and app.bodies == []
    assert run(call(HTTPDoor(app), scope(headers=[(b"content-type", b"application/json; charset=utf-8")]),
                    [b"{}"]))[0] == 200


def test_a_body_over_the_limit_is_413_declared_or_streamed():
    app = App()
    door = HTTPDoor(app, max_body=10)
    status, error = run(call(door, scope(headers=[JSON, (b"content-length", b"11")]), [b"x" * 11]))
    assert status == 413 and "at most 10 bytes, got 11" in error["message"]
    status, error = run(call(door, scope(headers=[JSON]), [b"x" * 6, b"x" * 6]))  # chunked: no length given
    assert status == 413 and app.bodies == [] and door.incomplete == 0


def test_the_api_key_is_checked_first_and_health_stays_open():
    app = App()
    door = HTTPDoor(app, api_key="s3cret")
    for auth in (None, b"Bearer wrong", b"s3cret", b"Basic s3cret"):
        headers = [(b"authorization", auth)] if auth else []
        status, error = run(call(door, scope(method="GET", path="/v1/models", headers=headers), [b""]))
        assert status == 401 and error["code"] == "invalid_api_key", auth
    # Even a request the door would refuse for its media type is refused for its key first.
    assert run(call(door, scope(headers=[(b"content-type", b"text/plain")]), [b"{}"]))[0] == 401
    assert run(call(door, scope(headers=[JSON, (b"authorization", b"Bearer s3cret")]), [b"{}"]))[0] == 200
    assert run(call(door, scope(method="GET", path="/health"), [b""]))[0] == 200


def test_a_slow_body_is_408_and_incomplete_requests_are_bounded():
    async def scenario():
        app = App()
        door = HTTPDoor(app, body_timeout_s=0.5, max_incomplete=2)
        stuck = [asyncio.create_task(call(door, scope(headers=[JSON]), [b'{"messages": '], complete=False)) for _ in range(2)]
        while door.incomplete < 2:
            await asyncio.sleep(0)
        busy = await call(door, scope(headers=[JSON]), [b"{"], complete=False)  # at once, not after the timeout
        whole = await call(door, scope(headers=[JSON]), [b"{}"])  # a body sent whole is still served
        assert door.incomplete == 2
        timed_out = await asyncio.gather(*stuck)
        after = await call(door, scope(headers=[JSON]), [b"{}"])
        return busy, whole, timed_out, after, door.incomplete, app.bodies

    busy, whole, timed_out, after, incomplete, bodies = run(scenario())
    assert busy[0] == 429 and busy[1]["code"] == "too_many_incomplete" and whole[0] == 200
    assert [t[0] for t in timed_out] == [408, 408] and timed_out[0][1]["code"] == "request_timeout"
    assert after[0] == 200 and incomplete == 0 and bodies == [b"{}", b"{}"]
