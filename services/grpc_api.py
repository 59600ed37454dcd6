"""Registers rstitch.v1.RStitch with a gRPC server: our own (services.grpc_server) or Serve's gRPC
proxy under `serve run` and a RayService (the `grpc_servicer_functions` entry).

The same as the generated add_RStitchServicer_to_server, except that:
- request bytes which do not parse become a MalformedRequest instead of failing inside the gRPC
  layer, so that the client gets INVALID_ARGUMENT with a reason rather than INTERNAL;
- in Serve's proxy, a client that goes away always cancels its request in the front end (see
  cancel_safe; our server's servicer cancels its stream itself).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import AsyncIterator, Callable

import grpc
from google.protobuf.message import DecodeError

from rstitch.v1 import rstitch_pb2 as pb
from services import grpc_door
from services.request_parsing import MalformedRequest


@dataclass(frozen=True)
class RpcStatus:
    """How a gRPC call ends when it fails: the code and the details the client sees (the
    Frontend's generate_stream yields it last; services.grpc_server ends the call with it)."""

    code: grpc.StatusCode
    details: str


def _parse(data: bytes):
    try:
        return pb.GenerateRequest.FromString(data)
    except DecodeError as err:
        return MalformedRequest(f"the GenerateRequest bytes do not parse: {err}")


def cancel_safe(stream_handler: Callable[..., AsyncIterator]) -> Callable[..., AsyncIterator]:
    """Wrap a streaming handler so that a client's cancel always reaches the request behind it.

    Serve's proxy (ray 2.60) cancels the replica's request only when gRPC's cancellation lands
    while the proxy awaits the replica's next message; when it lands while gRPC is sending the
    previous one to the client, the proxy's generator is merely dropped and the front end streams
    on until its generation ends, holding the session in both workers. Here the proxy's
    generator runs in its own task that only ever waits on the replica (its messages go to an
    unbounded queue), and that task is cancelled as soon as the RPC is over."""
    async def handler(request, context) -> AsyncIterator:
        await grpc_door.check(context)  # before the request reaches a replica
        live = _LiveContext(context)
        queue: asyncio.Queue = asyncio.Queue()
        pump = asyncio.create_task(_pump(stream_handler(request, live), queue))
        context.add_done_callback(lambda _: live.end(pump))
        try:
            while (message := await queue.get()) is not _END:
                yield message
            await pump  # the proxy's own errors surface here
        finally:
            live.end(pump)

    return handler


class _LiveContext:
    """The RPC's context, cut off once the RPC is over: the proxy still logs the peer and sets
    the status after a cancelled stream ends, and a finished RPC's context must not be touched
    (its peer() crashed the proxy process)."""

    def __init__(self, context):
        self._context, self._peer, self._live = context, context.peer(), True

    def end(self, pump: asyncio.Task) -> None:
        self._live = False
        pump.cancel()

    def peer(self) -> str:
        return self._peer

    def __getattr__(self, name: str):
        attr = getattr(self._context, name)
        if not callable(attr):
            return attr
        return lambda *args, **kwargs: attr(*args, **kwargs) if self._live else None


_END = object()


async def _pump(stream: AsyncIterator, queue: asyncio.Queue) -> None:
    try:
        async for message in stream:
            queue.put_nowait(message)
    finally:
        queue.put_nowait(_END)


class _CancelSafeHandler(type(grpc.unary_stream_rpc_method_handler(_parse))):
    """A method handler whose streaming behaviour, when Serve replaces it with the proxy's own
    (gRPCGenericServer._override_method_handler uses _replace), is wrapped by cancel_safe."""

    __slots__ = ()

    def _replace(self, **changes):
        if changes.get("unary_stream") is not None:
            changes["unary_stream"] = cancel_safe(changes["unary_stream"])
        return super()._replace(**changes)


def add_RStitchServicer_to_server(servicer, server) -> None:  # noqa: N802 - the name gRPC tooling expects
    """Register the RStitch service (server-streaming Generate) on `server`."""
    plain = grpc.unary_stream_rpc_method_handler(servicer.Generate, request_deserializer=_parse,
                                                 response_serializer=pb.GenerateResponse.SerializeToString)
    handlers = {"Generate": _CancelSafeHandler(*plain)}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("rstitch.v1.RStitch", handlers),))
