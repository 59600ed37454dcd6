"""services.grpc_door on its own: which peers count as this machine, and the key check."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from services import grpc_door


@pytest.mark.parametrize("peer, local", [
    ("ipv4:127.0.0.1:5000", True), ("ipv4:127.8.9.1:5000", True), ("ipv6:%5B::1%5D:5000", True),
    ("ipv6:[::1]:5000", True), ("ipv6:%5B::ffff:127.0.0.1%5D:5000", True), ("unix:/tmp/s", True),
    ("ipv4:192.0.2.2:5000", False), ("ipv6:%5B2001:db8::1%5D:5000", False),
    ("ipv6:%5B::ffff:192.0.2.2%5D:5000", False),
])
def test_loopback_peers_are_told_apart_from_the_network(peer, local):
    assert grpc_door.is_loopback(grpc_door.peer_host(peer)) is local


class Context:
    def __init__(self, peer, metadata=()):
        self._peer, self._metadata, self.aborted = peer, metadata, None

    def peer(self):
        return self._peer

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


def test_the_door_refuses_other_machines_when_loopback_only_and_checks_the_key(monkeypatch):
    monkeypatch.setenv(grpc_door.HOST_ENV, "127.0.0.1")
    monkeypatch.delenv("RSTITCH_API_KEY", raising=False)
    assert check(Context("ipv4:192.0.2.2:1")) == grpc.StatusCode.PERMISSION_DENIED
    assert check(Context("ipv6:%5B::1%5D:1")) is None
    monkeypatch.setenv(grpc_door.HOST_ENV, "0.0.0.0")
    assert check(Context("ipv4:192.0.2.2:1")) is None
    monkeypatch.setenv("RSTITCH_API_KEY", "k")
    assert check(Context("ipv4:192.0.2.2:1")) == grpc.StatusCode.UNAUTHENTICATED
    assert check(Context("ipv4:192.0.2.2:1", (("authorization", "Bearer x"),))) == grpc.StatusCode.UNAUTHENTICATED
    assert check(Context("ipv4:192.0.2.2:1", (("authorization", "Bearer k"),))) is None
