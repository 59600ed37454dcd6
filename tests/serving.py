"""Helpers for tests that run against the served app (tests/services): reach the worker replicas."""

from __future__ import annotations

import socket

from waiting import eventually

# Greedy on the tiny pair (tests/tiny_models.py), no policy ends this prompt within HOLD_TOKENS
# (the SLM ends "the quick brown fox" after 55): a stream opened with it is still running when a
# test cancels it or probes the workers, however fast the machine is.
HOLD_PROMPT = "hold this session"
HOLD_TOKENS = 480


def openai_client(http: str):
    """The real `openai` client on an HTTP API's URL, without retries: a 429 or 503 reaches the test
    as it was answered."""
    import openai

    return openai.OpenAI(base_url=f"{http}/v1", api_key="unused", max_retries=0, timeout=120)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_states(deployment: str, probes: int = 24) -> dict[str, dict]:
    """state() of every replica of a worker deployment, keyed by replica id (hashing spreads probes)."""
    import asyncio

    from ray import serve

    handle = serve.get_deployment_handle(deployment, "rstitch")

    async def probe():
        return await asyncio.gather(*(handle.options(session_id=f"probe-{i}").state.remote() for i in range(probes)))

    return {s["replica"]: s for s in asyncio.run(probe())}


def evict_llm_sessions() -> bool:
    """Drop every idle session the LLM replicas hold, as LRU eviction would. True if any was."""
    from ray import serve

    llm = serve.get_deployment_handle("LLMWorker", "rstitch")
    evicted = False
    for state in worker_states("LLMWorker").values():
        for sid in state["session_ids"]:
            evicted |= llm.options(session_id=sid).evict.remote(sid).result()
    return evicted


def wait_until_released(timeout: float) -> list[dict]:
    """state() of every worker replica, polled until none holds a session or a KV slot (or timeout)."""
    def released():
        states = [*worker_states("SLMWorker").values(), *worker_states("LLMWorker").values()]
        return states if all(s["sessions"] == 0 and not s["slots_in_use"] for s in states) else None

    return eventually(released, timeout, interval=0.1)


class LocalFrontend:
    """The real front end (Frontend, RemoteSession, workers) in this process, no Ray: its gRPC API on
    a grpc.aio server, on an event loop of its own thread (services/local.py)."""

    def __init__(self, slm: str, llm: str, dtype: str = "float32", **frontend_kwargs):
        import asyncio
        import threading

        from services.local import local_frontend, start_grpc

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

        async def start():
            self.frontend = local_frontend(slm, llm, dtype, **frontend_kwargs)
            return await start_grpc(self.frontend)

        self.server, port = self.call(start())
        self.address = f"127.0.0.1:{port}"
        self.http: str | None = None  # the OpenAI API's URL once serve_http() ran
        self._http_server = None

    def serve_http(self) -> str:
        """Also serve the OpenAI HTTP API (services.openai_api) on a free port of this loop; its URL."""
        import uvicorn

        from services.openai_api import build_http_app

        port = free_port()
        self._http_server = uvicorn.Server(uvicorn.Config(build_http_app(self.frontend), host="127.0.0.1", port=port,
                                                          log_level="warning", lifespan="off"))
        self.loop.call_soon_threadsafe(lambda: self.loop.create_task(self._http_server.serve()))
        eventually(lambda: self._http_server.started, message=lambda: "the HTTP server did not start")
        self.http = f"http://127.0.0.1:{port}"
        return self.http

    def call(self, coroutine, timeout: float = 300):
        """Run a coroutine on the front end's loop and wait for its result."""
        import asyncio

        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def sessions(self) -> dict[str, int]:
        """Sessions each worker holds, read on the front end's loop."""
        async def read():
            return {m: len(h.worker.store.sessions) for m, h in self.frontend.handles.items()}
        return self.call(read())

    def close(self) -> None:
        if self._http_server is not None:
            self._http_server.should_exit = True
        self.call(self.server.stop(None))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=60)
