"""Draining a front-end replica before the service stops (`rstitch serve` on SIGTERM/SIGINT).

Once draining, the replica refuses new requests (gRPC UNAVAILABLE, HTTP 503) and lets the streams in
flight run for a grace period; a stream still running when it ends is cut with the same clean
UNAVAILABLE, so every client gets either its whole output or an error it can retry elsewhere, never
a connection that just drops when the processes are stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Callable

import ray
from ray import serve


class Drain:
    """A replica's drain state: open, draining (no new request), then cut (no further event)."""

    def __init__(self, error: type[Exception]):
        self.error = error  # raised with a message meant for the client (front ends: UNAVAILABLE / 503)
        self.draining = False
        self.cut = False

    def check_admit(self) -> None:
        """Raise `error` for a request arriving once draining has begun."""
        if self.draining:
            raise self.error("the server is shutting down and takes no new requests; retry on another server")

    def check_running(self) -> None:
        """Raise `error` in a stream still running at the end of the grace period."""
        if self.cut:
            raise self.error("the server shut down before this request finished; retry it")

    async def drain(self, active: Callable[[], int], grace_s: float, cut_wait_s: float = 5.0) -> dict:
        """Refuse new requests, wait up to `grace_s` for `active()` to reach 0, then cut the rest and
        wait (at most `cut_wait_s`) until they have ended. Returns what happened, for the log."""
        started = time.monotonic()
        self.draining = True
        finished = await _wait_idle(active, grace_s)
        left = active()
        if not finished:
            self.cut = True
            await _wait_idle(active, cut_wait_s)
        return {"cut": left, "left": active(), "seconds": round(time.monotonic() - started, 3)}


async def _wait_idle(active: Callable[[], int], timeout_s: float) -> bool:
    # Polled: request ends are spread over every stream's own task, and 20 ms is far below a
    # token's time, so a drain ends within a step of its last stream.
    deadline = time.monotonic() + timeout_s
    while active() > 0:
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def drain_frontend(grace_s: float, app: str = "rstitch") -> dict:
    """Drain the app's Frontend replica (from a driver connected to its Ray cluster): what
    `rstitch serve` does on its first signal and a head pod's preStop hook does before SIGTERM."""
    frontend = serve.get_deployment_handle("Frontend", app)
    return frontend.drain.remote(grace_s).result(timeout_s=grace_s + 15)


def main(argv: list[str] | None = None) -> int:
    """`python -m services.shutdown --grace-period S`: a Kubernetes preStop hook on the pod holding
    the Frontend. The pod keeps serving until the hook returns, so the streams in flight finish
    (or are cut with UNAVAILABLE) before the container gets SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m services.shutdown", description=main.__doc__)
    parser.add_argument("--grace-period", type=float, required=True, metavar="SECONDS")
    parser.add_argument("--app", default="rstitch", help="the Serve application name (default: %(default)s)")
    args = parser.parse_args(argv)
    ray.init(address="auto", log_to_driver=False, logging_level="ERROR")
    try:
        print(f"rstitch: drained: {drain_frontend(args.grace_period, args.app)}", flush=True)
    finally:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
