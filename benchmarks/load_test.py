"""Sustained load against the served system: concurrent gRPC clients with random disconnects and
deadlines; every completed stream must equal its reference output; afterwards the workers must hold
no session and their memory must be back near its baseline. Then bursts of concurrent cancels:
--burst-size streams read 1-5 messages each and all go away at once; the time until both workers
hold no session is each burst's release time (the worst is reported; a second is the promise).

Loopback only, bounded in time and in requests. Starts its own local service (tiny random models
unless --slm/--llm are given) or targets --address. Prints the figures (and --json writes them).

    python benchmarks/load_test.py --clients 32 --duration 180
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
PROMPTS = ["the quick brown fox", "def add(a, b):", "Natalia sold clips to 48 of her friends",
           "Step 1: multiply. Step 2: add.", "naïve café 日本語"]
POLICIES = ["rstitch", "llm", "slm", "speculative"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--duration", type=float, default=180.0, help="seconds of load (bounded)")
    p.add_argument("--max-requests", type=int, default=100_000, help="stop after this many requests")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--slm"), p.add_argument("--llm")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="FILE", help="also write the figures to FILE")
    p.add_argument("--cancel-bursts", type=int, default=5, help="bursts of concurrent cancels after the load")
    p.add_argument("--burst-size", type=int, default=30, help="streams cancelled at once in a burst")
    p.add_argument("--release-limit", type=float, default=1.0,
                   help="exit 1 if a burst's release takes longer (seconds; the target is 1)")
    args = p.parse_args()
    if not (1 <= args.clients <= 256 and 0 < args.duration <= 3600):
        p.error("--clients must be in [1, 256] and --duration in (0, 3600]")
    if not (0 <= args.cancel_bursts <= 100 and 1 <= args.burst_size <= 256):
        p.error("--cancel-bursts must be in [0, 100] and --burst-size in [1, 256]")
    figures = run(args)
    print(json.dumps(figures, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    released = figures["worst_burst_release_s"] is None or figures["worst_burst_release_s"] <= args.release_limit
    return 0 if figures["failures"] == 0 and figures["sessions_after"] == 0 and released else 1


def run(args) -> dict:
    from rstitch_cli.serve import local_service

    slm, llm = args.slm, args.llm
    if slm is None:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from tiny_models import save_pair

        slm, llm = map(str, save_pair(Path(tempfile.mkdtemp(prefix="rstitch-load-"))))
    app = {"slm": slm, "llm": llm, "dtype": "float32", "llm_replicas": 2, "slm_num_cpus": 0.4, "llm_num_cpus": 0.4,
           "max_sessions": 2 * max(args.clients, args.burst_size),
           "max_concurrent_requests": 2 * max(args.clients, args.burst_size)}
    # Served as `rstitch serve` serves it, on free ports (Serve's default 8000 may be taken).
    with local_service(app, free_port(), free_port(), os.cpu_count(), http_port=free_port(), quiet=True) as address:
        figures = load(address, args)
        releases = [cancel_burst(address, args.burst_size, random.Random(args.seed + b))
                    for b in range(args.cancel_bursts)]
        return {**figures, "cancel_bursts": len(releases), "burst_size": args.burst_size,
                "burst_release_s": [round(r, 3) for r in releases],
                "worst_burst_release_s": round(max(releases), 3) if releases else None}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_totals() -> dict:
    import asyncio

    from ray import serve

    async def probe(name):
        handle = serve.get_deployment_handle(name, "rstitch")
        states = await asyncio.gather(*(handle.options(session_id=f"probe-{i}").state.remote() for i in range(24)))
        return {s["replica"]: s for s in states}

    states = {n: asyncio.run(probe(n)) for n in ("SLMWorker", "LLMWorker")}
    return {"sessions": sum(s["sessions"] for d in states.values() for s in d.values()),
            "rss_mb": sum(s["rss_bytes"] for d in states.values() for s in d.values()) / 2**20,
            "freed_at": max((s["freed_at"] or 0.0) for d in states.values() for s in d.values())}


def cancel_burst(address: str, size: int, rng: random.Random) -> float:
    """Open `size` streams, read 1-5 messages of each, cancel them all at once; seconds from the
    cancels to the workers' last release, read once they hold no session (the workers stamp each
    release, so the probe's own time does not count; 60 s at most, else inf)."""
    from rstitch_core import RoutingParams, SamplingParams
    from services.client import RStitchClient

    with RStitchClient(address) as client:
        streams = [client.generate(prompt="hold this session", sampling=SamplingParams(max_new_tokens=400),
                                   routing=RoutingParams(policy="rstitch", threshold=0.5)) for _ in range(size)]
        for stream in streams:
            for _, _ in zip(range(rng.randint(1, 5)), stream):
                pass
        gate = threading.Barrier(size + 1)
        cancellers = [threading.Thread(target=lambda s=s: (gate.wait(), s.cancel())) for s in streams]
        for t in cancellers:
            t.start()
        gate.wait()
        cancelled = time.time()  # the workers' stamps are time.time() too
        while time.time() - cancelled < 60:
            if (totals := worker_totals())["sessions"] == 0:
                return max(totals["freed_at"] - cancelled, 0.0)
            time.sleep(0.02)
    return float("inf")


def load(address: str, args) -> dict:
    import grpc

    from rstitch_core import RoutingParams, SamplingParams
    from services.client import RStitchClient
    from services.protocol import ResultBuilder

    sampling = SamplingParams(max_new_tokens=args.max_new_tokens)
    cases = [(prompt, policy) for prompt in PROMPTS for policy in POLICIES]
    with RStitchClient(address) as client:  # references: undisturbed runs, one per case
        reference = {c: client.generate_result(prompt=c[0], sampling=sampling,
                                               routing=RoutingParams(policy=c[1], threshold=0.5))["token_ids"]
                     for c in cases}
    baseline = worker_totals()
    outcomes, latencies, failures = Counter(), [], []
    lock, issued = threading.Lock(), [0]
    deadline = time.monotonic() + args.duration

    def client_loop(seed: int) -> None:
        rng = random.Random(seed)
        with RStitchClient(address) as client:
            while time.monotonic() < deadline:
                with lock:
                    if issued[0] >= args.max_requests:
                        return
                    issued[0] += 1
                case = rng.choice(cases)
                mode = rng.choices(["complete", "disconnect", "deadline"], [0.7, 0.15, 0.15])[0]
                timeout = rng.uniform(0.02, 0.5) if mode == "deadline" else 60
                stop_after = rng.randint(1, 10)
                builder, start = ResultBuilder(), time.perf_counter()
                stream = client.generate(prompt=case[0], sampling=sampling, timeout=timeout,
                                         routing=RoutingParams(policy=case[1], threshold=0.5))
                try:
                    for i, _ in enumerate(builder.events(stream)):
                        if mode == "disconnect" and i >= stop_after:
                            stream.cancel()
                            break
                    if builder.finish is not None:
                        got = list(builder.finish.token_ids)  # indexes were checked: no gap, no duplicate
                        with lock:
                            latencies.append(time.perf_counter() - start)
                            outcomes["completed"] += 1
                            if got != reference[case]:
                                failures.append(f"{case}: output differs from the reference")
                    elif mode == "disconnect":
                        with lock:
                            outcomes["disconnected"] += 1
                except grpc.RpcError as err:
                    code = err.code()
                    with lock:
                        if code == grpc.StatusCode.CANCELLED and mode == "disconnect":
                            outcomes["disconnected"] += 1
                        elif code == grpc.StatusCode.DEADLINE_EXCEEDED and mode == "deadline":
                            outcomes["deadline_exceeded"] += 1
                        else:
                            failures.append(f"{case} {mode}: {code.name}: {err.details()}")
                except ValueError as err:  # a malformed stream: gap, duplicate, missing finish
                    with lock:
                        failures.append(f"{case}: bad stream: {err}")

    threads = [threading.Thread(target=client_loop, args=(args.seed + i,)) for i in range(args.clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    settle = time.monotonic()
    after = worker_totals()
    while after["sessions"] and time.monotonic() - settle < 5:
        time.sleep(0.2)
        after = worker_totals()
    latencies.sort()
    return {"clients": args.clients, "seconds": round(elapsed, 1), "requests": issued[0],
            **dict(outcomes), "failures": len(failures), "failure_examples": failures[:5],
            "p50_latency_s": round(statistics.median(latencies), 3) if latencies else None,
            "p95_latency_s": round(latencies[int(0.95 * (len(latencies) - 1))], 3) if latencies else None,
            "sessions_after": after["sessions"], "worker_rss_mb_before": round(baseline["rss_mb"], 1),
            "worker_rss_mb_after": round(after["rss_mb"], 1)}


if __name__ == "__main__":
    sys.exit(main())
