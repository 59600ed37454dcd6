"""services.grpc_door on its own: the key check."""

from __future__ import annotations

import asyncio

import grpc

from services import grpc_door


class Context:
    def __init__(self, metadata=()):
        self._metadata, self.aborted = metadata, None

    def invocation_metadata(self):
        return self._metadata

    async def abort(self, code, details):
        self.aborted = code
        raise grpc.RpcError(details)


def check(context) -> grpc.StatusCode | None:
    try:
        asyncio.run(grpc_door.check(context))
    except grpc.RpcError:
        pass
    return context.aborted


def test_the_door_checks_the_key_only_when_the_server_has_one(monkeypatch):
    monkeypatch.delenv("RSTITCH_API_KEY", raising=False)
    assert check(Context()) is None
    monkeypatch.setenv("RSTITCH_API_KEY", "k")
    assert check(Context()) == grpc.StatusCode.UNAUTHENTICATED
    assert check(Context((("authorization", "Bearer x"),))) == grpc.StatusCode.UNAUTHENTICATED
    assert check(Context((("authorization", "Basic k"),))) == grpc.StatusCode.UNAUTHENTICATED
    assert check(Context((("authorization", "Bearer k"),))) is None
    assert check(Context((("Authorization", "bearer k"),))) is None
