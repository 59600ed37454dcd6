"""A burst of clients going away at once: every session is freed in both workers.

The target is one second; on the 2-core AMD EPYC of docs/results.md 30 simultaneous cancels free
everything in 0.9-2.5 s (Serve routes the 60 release calls one by one while the workers finish the
passes in flight), so this test bounds the release at BURST_LIMIT_S: it catches the 4-10 s
releases of the proxy bug (ray-project/ray#42665) it guards against, not the 1 s target, which is
reported as missed.

RSTITCH_BURST_RUNS=20 repeats the burst 20 times on one service (the issue's "20 runs in a row").
"""

from __future__ import annotations

import os
import random
import threading
import time

import pytest

from rstitch_core import RoutingParams, SamplingParams
from serving import worker_states

BURST = 30
APP_ARGS = {"max_sessions": BURST + 2, "max_concurrent_requests": BURST + 2, "router": None}
RUNS = int(os.environ.get("RSTITCH_BURST_RUNS", "1"))
BURST_LIMIT_S = 4.0
# Neither tiny model ends this prompt early: every stream holds its session until cancelled.
HOLD_PROMPT = "hold this session"
LONG = SamplingParams(max_new_tokens=480)


def held() -> dict[str, int]:
    return {d: sum(s["sessions"] for s in worker_states(d).values()) for d in ("SLMWorker", "LLMWorker")}


def freed_after(since: float, limit_s: float) -> float:
    """Seconds from `since` to the first look (begun within `limit_s`) at workers holding no
    session; AssertionError with what they still hold otherwise."""
    while (looked := time.monotonic()) - since <= limit_s:
        if not any(held().values()):
            return looked - since
        time.sleep(0.02)
    raise AssertionError(f"still held {limit_s}s after the cancels: {held()}")


@pytest.mark.parametrize("run", range(RUNS))
def test_a_burst_of_cancels_frees_every_session_in_both_workers(client, run):
    rng = random.Random(run)
    streams = [client.generate(prompt=HOLD_PROMPT, sampling=LONG, routing=RoutingParams(policy="rstitch", threshold=0.5))
               for _ in range(BURST)]
    for stream in streams:  # each client reads 1-5 messages, then waits to go away with the others
        for _, _ in zip(range(rng.randint(1, 5)), stream):
            pass
    before = held()
    assert before["SLMWorker"] == BURST and before["LLMWorker"] >= 1, before  # both workers hold sessions
    gate = threading.Barrier(BURST + 1)
    cancellers = [threading.Thread(target=lambda s=s: (gate.wait(), s.cancel())) for s in streams]
    for t in cancellers:
        t.start()
    gate.wait()
    cancelled = time.monotonic()
    for t in cancellers:
        t.join()
    assert freed_after(cancelled, BURST_LIMIT_S) <= BURST_LIMIT_S
