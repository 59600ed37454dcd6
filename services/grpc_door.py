"""The gRPC API's door, run in Serve's gRPC proxy before a call is sent to any replica.

- The API key (RSTITCH_API_KEY), when the server has one: metadata `authorization: Bearer KEY`,
  as over HTTP, else UNAUTHENTICATED.
- Loopback only unless asked: Serve's proxy binds its gRPC port on every interface (`[::]`, ray
  2.60 has no host option for it), so when `rstitch serve` runs without `--host 0.0.0.0`
  (RSTITCH_HOST a loopback address) a peer from another machine gets PERMISSION_DENIED at once.
Both come from the environment because the proxy is Ray's process: `rstitch serve` sets them
before Ray starts, a RayService sets them on its containers.
"""

from __future__ import annotations

import ipaddress
import os
from urllib.parse import unquote

import grpc

from services.http_door import api_key_from_env, key_matches

HOST_ENV = "RSTITCH_HOST"


def loopback_only() -> bool:
    """Whether the server was asked to serve this machine only (RSTITCH_HOST is a loopback address)."""
    host = os.environ.get(HOST_ENV)
    return host is not None and is_loopback(host)


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 (also as an IPv4-mapped address) or `localhost`."""
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def peer_host(peer: str) -> str:
    """The address of a gRPC peer string: 'ipv4:1.2.3.4:5', 'ipv6:%5B::1%5D:5' (gRPC escapes the
    brackets, as in a URI), 'unix:...'."""
    kind, _, rest = unquote(peer).partition(":")
    if kind == "unix":
        return "localhost"
    return rest.rsplit(":", 1)[0].strip("[]")


async def check(context) -> None:
    """Abort the call (the proxy sends nothing to a replica) unless its peer and key may use the API."""
    if loopback_only() and not is_loopback(peer_host(context.peer())):
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, "this server accepts calls from its own "
                            "machine only (start it with --host 0.0.0.0 to serve the network)")
    key = api_key_from_env()
    if key is None:
        return
    presented = None
    for name, value in context.invocation_metadata() or ():
        if name.lower() == "authorization" and isinstance(value, str) and value[:7].lower() == "bearer ":
            presented = value[7:].strip()
    if not key_matches(presented, key):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                            "invalid or missing API key: send the metadata 'authorization: Bearer <key>'")
