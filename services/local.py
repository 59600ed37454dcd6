"""The front end without Ray: the workers in this process behind handle-shaped adapters, and the
gRPC API on the grpc.aio server `rstitch serve` runs (services.grpc_server).

In production Serve carries each front-end call to a worker replica (DeploymentHandle), and each
gRPC call to the front end. Here the same Frontend, RemoteSession and ModelWorker code
runs with both carriers replaced by direct calls, so the front end's behaviour (validation,
streaming, limits, metrics, cancellation, cost-aware drafting) is tested in seconds without a
cluster (tests/services/test_local_frontend.py, tests/cli/test_client.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from services import grpc_server
from services.frontend import Frontend
from services.worker import LLMWorker, SLMWorker, WorkerConfig


class LocalHandle:
    """The part of Serve's DeploymentHandle the front end uses: `options(stream=..., ...)` and
    `handle.method.remote(*args)`, an awaitable (or, streaming, an async iterator) of the call."""

    def __init__(self, worker, stream: bool = False):
        self.worker, self.stream = worker, stream

    def options(self, *, stream: bool | None = None, **_routing: Any) -> LocalHandle:
        # session_id and the other routing options choose a replica: there is only this one.
        return LocalHandle(self.worker, self.stream if stream is None else stream)

    def __getattr__(self, name: str) -> _Method:
        return _Method(getattr(self.worker, name), self.stream)


class _Method:
    def __init__(self, method, stream: bool):
        self.method, self.stream = method, stream

    def remote(self, *args, **kwargs):
        if self.stream:
            return self.method(*args, **kwargs)  # the worker's async generator
        return asyncio.ensure_future(self.method(*args, **kwargs))


def local_frontend(slm: str, llm: str, dtype: str = "float32", *, worker_kwargs: dict | None = None,
                 **frontend_kwargs) -> Frontend:
    """A Frontend over an SLM and an LLM worker loaded in this process (model sources as for serve)."""
    config = dict(dtype=dtype, device="cpu", **(worker_kwargs or {}))
    workers = SLMWorker(WorkerConfig(slm, **config)), LLMWorker(WorkerConfig(llm, **config))
    return Frontend(*(LocalHandle(w) for w in workers), slm, llm, **frontend_kwargs)


async def start_grpc(frontend: Frontend, host: str = "127.0.0.1", port: int = 0) -> tuple[grpc.aio.Server, int]:
    """Serve `frontend` over gRPC on this event loop, as `rstitch serve` does (services.grpc_server);
    returns the started server and its port."""
    return await grpc_server.start(LocalHandle(frontend), host, port)
