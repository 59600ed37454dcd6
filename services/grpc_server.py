"""The gRPC API on a grpc.aio server of our own, in front of the Frontend: what `rstitch serve`
runs (in a Ray actor, GrpcServerActor) and what the in-process front end of tests and tools runs.

Serve's gRPC proxy (used by `serve run` and the RayService) binds its port on every interface
and fixes its server options; this server binds the address it is given (loopback by default)
and sets the limits a server open to strangers needs (SERVER_OPTIONS):
- a message over services.limits.MAX_REQUEST_BYTES is refused from its length prefix, before it
  is read;
- a connection that has not finished gRPC's HTTP/2 handshake within HANDSHAKE_TIMEOUT_S is
  closed (the gRPC form of a client that never finishes its headers), one with no call for
  IDLE_CONNECTION_S is closed, one whose peer stops answering keepalive pings is closed, and a
  client's own pings are bounded (gRPC's defaults: at most one every 5 min without a call, 2
  strikes);
- server reflection is on (grpcurl);
- each call passes the door (services.grpc_door: the API key) before anything reaches a replica.
Each call is forwarded to the Frontend's generate_stream through a Serve DeploymentHandle (or,
without Ray, services.local.LocalHandle); a call the client ends is cancelled there too.
"""

from __future__ import annotations

from typing import Any

import grpc
import ray
from grpc_reflection.v1alpha import reflection
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

from rstitch.v1 import rstitch_pb2 as pb
from services import grpc_door
from services.grpc_api import RpcStatus, add_RStitchServicer_to_server
from services.limits import MAX_REQUEST_BYTES

HANDSHAKE_TIMEOUT_S = 10
IDLE_CONNECTION_S = 300
KEEPALIVE_S = 60  # a server ping after this long without data; the peer has KEEPALIVE_TIMEOUT_S to answer
KEEPALIVE_TIMEOUT_S = 20
MAX_STREAMS_PER_CONNECTION = 128  # calls at once on one connection (the front end bounds all of them too)
SERVER_OPTIONS = (
    ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
    ("grpc.server_handshake_timeout_ms", HANDSHAKE_TIMEOUT_S * 1000),
    ("grpc.max_connection_idle_ms", IDLE_CONNECTION_S * 1000),
    ("grpc.keepalive_time_ms", KEEPALIVE_S * 1000),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_S * 1000),
    ("grpc.max_concurrent_streams", MAX_STREAMS_PER_CONNECTION),
    ("grpc.so_reuseport", 0),  # a port already served fails to bind instead of sharing its calls
)
_UNREACHABLE = (RayActorError, ActorUnavailableError, BackPressureError, DeploymentUnavailableError)


class ForwardingServicer:
    """rstitch.v1.RStitch: each call through the door, then to the Frontend's generate_stream."""

    def __init__(self, frontend: Any):
        self.frontend = frontend.options(stream=True)  # a DeploymentHandle (or LocalHandle) of the Frontend

    async def Generate(self, request, context):  # noqa: N802 - the RPC's name
        await grpc_door.check(context)
        stream = self.frontend.generate_stream.remote(request)
        try:
            async for item in stream:
                if isinstance(item, RpcStatus):
                    await context.abort(item.code, item.details)
                yield item
        except _UNREACHABLE as err:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"the front end is unavailable ({type(err).__name__}); "
                                "retry later")
        finally:
            # A call that ends early (the client cancelled, its deadline passed, it went away)
            # ends the request in the front end, which frees its sessions in both workers.
            await _close(stream)


async def _close(stream) -> None:
    if hasattr(stream, "cancel"):  # Serve's DeploymentResponseGenerator
        stream.cancel()
    else:  # an async generator, without Ray
        await stream.aclose()


async def start(frontend: Any, host: str, port: int) -> tuple[grpc.aio.Server, int]:
    """Serve the gRPC API for `frontend` (a handle) on host:port on this event loop; returns the
    started server and its port (`port` 0: a free one). OSError if the address cannot be bound."""
    server = grpc.aio.server(options=SERVER_OPTIONS)
    add_RStitchServicer_to_server(ForwardingServicer(frontend), server)
    # What `grpcurl list` and `describe` ask for (Serve's proxy offers it too).
    reflection.enable_server_reflection((pb.DESCRIPTOR.services_by_name["RStitch"].full_name, reflection.SERVICE_NAME),
                                        server)
    host = host.strip("[]")
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as err:  # grpc's way of saying the address is taken or not this machine's
        raise OSError(f"cannot serve gRPC on {address}: {err}") from None
    await server.start()
    return server, bound


@ray.remote(num_cpus=0)
class GrpcServerActor:
    """The gRPC server on the event loop of a Ray actor: a process of its own, as Serve's proxies
    are, so that it shares its interpreter with neither `rstitch serve`'s process nor a client's."""

    async def start(self, host: str, port: int, app: str = "rstitch") -> int:
        """Serve the app's Frontend on host:port; returns the port (`port` 0: a free one)."""
        self.server, bound = await start(serve.get_deployment_handle("Frontend", app), host, port)
        return bound

    async def stop(self, grace_s: float) -> None:
        """Refuse new calls, give those still open `grace_s`, then end them."""
        await self.server.stop(grace_s)


def start_actor(host: str, port: int, app: str = "rstitch") -> tuple[Any, int]:
    """Start a GrpcServerActor serving `app` on host:port (from a driver of the app's Ray cluster);
    returns the actor and its port. OSError if the address cannot be bound."""
    actor = GrpcServerActor.options(name=f"{app}-grpc-server").remote()
    try:
        return actor, ray.get(actor.start.remote(host, port, app))
    except ray.exceptions.RayTaskError as err:
        ray.kill(actor)
        if isinstance(err.cause, OSError):
            raise err.cause from None
        raise


def stop_actor(actor: Any, grace_s: float = 1.0) -> None:
    """Stop the server of start_actor and end its actor."""
    try:
        ray.get(actor.stop.remote(grace_s), timeout=grace_s + 30)
    finally:
        ray.kill(actor)
