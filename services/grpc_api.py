"""Registers rstitch.v1.RStitch with Serve's gRPC proxy (the `grpc_servicer_functions` entry).

The same as the generated add_RStitchServicer_to_server, except that request bytes which do not
parse become a MalformedRequest instead of failing inside the gRPC layer, so that the client gets
INVALID_ARGUMENT with a reason rather than INTERNAL.
"""

from __future__ import annotations

import grpc
from google.protobuf.message import DecodeError

from rstitch.v1 import rstitch_pb2 as pb
from services.protocol import MalformedRequest


def _parse(data: bytes):
    try:
        return pb.GenerateRequest.FromString(data)
    except DecodeError as err:
        return MalformedRequest(f"the GenerateRequest bytes do not parse: {err}")


def add_RStitchServicer_to_server(servicer, server) -> None:  # noqa: N802 - the name gRPC tooling expects
    """Register the RStitch service (server-streaming Generate) on `server`."""
    handlers = {"Generate": grpc.unary_stream_rpc_method_handler(
        servicer.Generate, request_deserializer=_parse,
        response_serializer=pb.GenerateResponse.SerializeToString)}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("rstitch.v1.RStitch", handlers),))
