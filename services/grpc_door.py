"""The gRPC API's door, passed before a call is sent to any replica: the API key
(RSTITCH_API_KEY), when the server has one, as metadata `authorization: Bearer KEY` (as over
HTTP), else UNAUTHENTICATED. Run by the gRPC server of `rstitch serve` (services.grpc_server) and,
under `serve run` or a RayService, by Serve's gRPC proxy (services.grpc_api): it comes from the
environment because that proxy is Ray's process, started with the environment a RayService sets.
"""

from __future__ import annotations

import grpc

from services.http_door import api_key_from_env, key_matches


async def check(context) -> None:
    """Abort the call (nothing is sent to a replica) unless it carries the server's key."""
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
