"""Python client for the rstitch gRPC API (grpc and the generated stubs; no ray)."""

from __future__ import annotations

from typing import Iterator, Sequence

import grpc

from rstitch.v1 import rstitch_pb2, rstitch_pb2_grpc
from rstitch_core.config import RoutingParams, SamplingParams
from services.protocol import build_request, collect_responses


class RStitchClient:
    """A connection to one rstitch server at `address` ("host:port", plaintext).

    `timeout` is the default deadline in seconds for a whole generation (None: no deadline).
    Use as a context manager, or call close(); closing cancels calls still streaming.
    """

    def __init__(self, address: str, timeout: float | None = None):
        self.address = address
        self.timeout = timeout
        self._channel = grpc.insecure_channel(address)
        self._stub = rstitch_pb2_grpc.RStitchStub(self._channel)

    def generate(self, prompt: str | None = None, messages: Sequence[dict] | None = None, *,
                 sampling: SamplingParams = SamplingParams(), routing: RoutingParams = RoutingParams(),
                 request_id: str = "", timeout: float | None = None) -> Iterator[rstitch_pb2.GenerateResponse]:
        """Stream one generation: Tokens messages, SwitchEvents, and a Finish message last.

        The returned iterator is also a grpc.Call (cancel() stops the generation on the server).
        Iterating raises grpc.RpcError on failure: INVALID_ARGUMENT for a bad request (its details
        name the field), UNAVAILABLE when the server cannot be reached, DEADLINE_EXCEEDED past
        `timeout` (default: the client's). ValueError if `messages` are malformed.
        """
        request = build_request(prompt, messages, sampling, routing, request_id)
        return self._stub.Generate(request, timeout=self.timeout if timeout is None else timeout)

    def generate_result(self, prompt: str | None = None, messages: Sequence[dict] | None = None, *,
                        sampling: SamplingParams = SamplingParams(), routing: RoutingParams = RoutingParams(),
                        request_id: str = "", timeout: float | None = None) -> dict:
        """The whole generation as one dict with the keys of `rstitch generate --json` (Generation.to_dict())."""
        return collect_responses(self.generate(prompt, messages, sampling=sampling, routing=routing,
                                               request_id=request_id, timeout=timeout))

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> RStitchClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
