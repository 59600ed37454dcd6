"""Throughput under concurrency, through the served system: LLM-only vs R-Stitch, side by side.

For each concurrency level, that many gRPC streams start together (one request each, different
prompts, greedy, the same token budget); the figures are aggregate generated tokens per second
(all tokens / wall time from the first request to the last finish) and p50/p95 request latency.
Policies alternate at every level, so drift of a shared machine hits both alike. With
--compare-unbatched the service is then redeployed with batching off and concurrency 1 is measured
again (the batch-1 latency that batching must not make worse). With --shadow-prefill-tokens N the
service is redeployed with shadow prefill on and R-Stitch is measured again at every level. Switch
latency is the gap in a client's stream at a switch (last token before it to the first after it).

    python benchmarks/throughput.py                       # the embedded default pair
    python benchmarks/throughput.py --levels 1,4,8,16 --max-new-tokens 64 --compare-unbatched
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--slm"), p.add_argument("--llm")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--levels", default="1,4,8,16", help="concurrency levels (default: %(default)s)")
    p.add_argument("--threshold", type=float, default=0.05, help="tau for rstitch (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--compare-unbatched", action="store_true")
    p.add_argument("--torch-threads", type=int, help="torch threads per worker (default: all cores each)")
    p.add_argument("--shadow-prefill-tokens", type=int, default=0, metavar="N",
                   help="also measure R-Stitch with shadow prefill after N unseen tokens (default: off)")
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args()
    levels = [int(v) for v in args.levels.split(",")]
    if not all(1 <= c <= 64 for c in levels):
        p.error(f"--levels must be integers in [1, 64], got {args.levels}")
    figures = run(args, levels)
    print_table(figures, args)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return 0


def run(args, levels: list[int]) -> dict:
    import ray
    from ray import serve
    from ray.serve.config import gRPCOptions

    from rstitch_core.assets import ensure_default_pair
    from services.app import GRPC_SERVICER, build_app

    slm, llm = (args.slm, args.llm) if args.slm else map(str, ensure_default_pair())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    figures: dict = {"levels": {}, "unbatched": None, "shadow": None, "threshold": args.threshold,
                     "max_new_tokens": args.max_new_tokens, "cpus": os.cpu_count()}
    app = {"slm": slm, "llm": llm, "dtype": args.dtype, "slm_num_cpus": 0.5, "llm_num_cpus": 0.5,
           "max_sessions": max(64, max(levels)), "torch_threads": args.torch_threads}
    figures["torch_threads"] = args.torch_threads
    try:
        serve.start(grpc_options=gRPCOptions(port=port, grpc_servicer_functions=[GRPC_SERVICER]))
        serve.run(build_app(app), name="rstitch", route_prefix="/")
        address = f"127.0.0.1:{port}"
        warm_up(address, args)
        for c in levels:
            figures["levels"][c] = {policy: measure(address, policy, c, args) for policy in ("llm", "rstitch")}
            row = figures["levels"][c]
            print(f"concurrency {c}: llm {row['llm']['tokens_per_s']:.1f} tok/s, rstitch "
                  f"{row['rstitch']['tokens_per_s']:.1f} tok/s", file=sys.stderr, flush=True)
        figures["batching"] = {role: serve.get_deployment_handle(f"{role}Worker", "rstitch").state.remote().result()
                               .get("batching") for role in ("SLM", "LLM")}
        if args.shadow_prefill_tokens:
            serve.run(build_app({**app, "shadow_prefill_tokens": args.shadow_prefill_tokens}), name="rstitch",
                      route_prefix="/")
            warm_up(address, args)
            figures["shadow"] = {"tokens": args.shadow_prefill_tokens,
                                 "levels": {c: measure(address, "rstitch", c, args) for c in levels}}
        if args.compare_unbatched:
            serve.run(build_app({**app, "batching": False}), name="rstitch", route_prefix="/")
            warm_up(address, args)
            figures["unbatched"] = {policy: measure(address, policy, 1, args) for policy in ("llm", "rstitch")}
    finally:
        serve.shutdown()
        ray.shutdown()
    return figures


def warm_up(address: str, args) -> None:
    from rstitch_core import RoutingParams, SamplingParams
    from services.client import RStitchClient

    with RStitchClient(address) as client:
        for policy in ("llm", "rstitch"):
            client.generate_result(prompt="warm up", sampling=SamplingParams(max_new_tokens=4),
                                   routing=RoutingParams(policy=policy, threshold=args.threshold))


def measure(address: str, policy: str, concurrency: int, args) -> dict:
    """`concurrency` streams started together, one request each; aggregate and per-request figures."""
    from rstitch_cli.bench import PROMPTS
    from rstitch_core import RoutingParams, SamplingParams
    from services.client import RStitchClient
    from services.protocol import collect_responses

    sampling = SamplingParams(max_new_tokens=args.max_new_tokens)
    routing = RoutingParams(policy=policy, threshold=args.threshold)
    results: list[dict | None] = [None] * concurrency
    start = threading.Barrier(concurrency + 1)

    def stream(i: int) -> None:
        with RStitchClient(address) as client:
            messages = [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]
            start.wait()
            t = time.perf_counter()
            timed = [(time.perf_counter(), r) for r in client.generate(messages=messages, sampling=sampling,
                                                                         routing=routing, timeout=3600)]
            r = collect_responses(r for _, r in timed)
            results[i] = {"latency_s": time.perf_counter() - t, "tokens": len(r["token_ids"]),
                          "llm_share": r["stats"]["llm_token_share"], "end": time.perf_counter(),
                          "switch_gaps": switch_gaps(timed)}

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = max(r["end"] for r in results) - t0
    latencies = sorted(r["latency_s"] for r in results)
    tokens = sum(r["tokens"] for r in results)
    return {"concurrency": concurrency, "tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall,
            "p50_s": statistics.median(latencies),
            "p95_s": latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))],
            "llm_share": sum(r["llm_share"] * r["tokens"] for r in results) / max(tokens, 1),
            "switch_gap_p50_s": {d: _median([g for r in results for g in r["switch_gaps"][d]])
                                 for d in ("slm_to_llm", "llm_to_slm")},
            "inter_token_p50_s": _median([g for r in results for g in r["switch_gaps"]["none"]])}


def switch_gaps(timed: list) -> dict[str, list[float]]:
    """Gaps between consecutive tokens of one stream, by the direction of the (last) switch between
    them, or "none" for tokens of one turn. `timed`: (arrival time, GenerateResponse) in order."""
    from rstitch.v1 import rstitch_pb2 as pb

    gaps: dict[str, list[float]] = {"slm_to_llm": [], "llm_to_slm": [], "none": []}
    last_token_at, switched = None, "none"
    for at, response in timed:
        kind = response.WhichOneof("event")
        if kind == "switch_event":
            to_llm = response.switch_event.direction == pb.SWITCH_DIRECTION_SLM_TO_LLM
            switched = "slm_to_llm" if to_llm else "llm_to_slm"
        elif kind == "tokens":
            if last_token_at is not None:
                gaps[switched].append(at - last_token_at)
            last_token_at, switched = at, "none"
    return gaps


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def print_table(f: dict, args) -> None:
    print(f"{f['max_new_tokens']} new tokens per request, tau = {f['threshold']}, greedy, {f['cpus']} CPUs, "
          f"torch threads per worker: {f['torch_threads'] or 'all'}, one request per stream, all streams started "
          "together")
    for role, b in (f.get("batching") or {}).items():
        if b and b["steps"]:
            print(f"{role} worker: {b['steps']} batched steps, mean {b['rows'] / b['steps']:.2f} sessions per step "
                  f"(max {b['max_rows']}), {b['lingers']} steps waited the full linger")
    print("| streams | LLM-only tok/s | R-Stitch tok/s | ratio | LLM-only p50 / p95 s | R-Stitch p50 / p95 s "
          "| R-Stitch LLM share |")
    print("|---|---|---|---|---|---|---|")
    for c, row in f["levels"].items():
        a, b = row["llm"], row["rstitch"]
        print(f"| {c} | {a['tokens_per_s']:.1f} | {b['tokens_per_s']:.1f} | {b['tokens_per_s'] / a['tokens_per_s']:.2f}x "
              f"| {a['p50_s']:.1f} / {a['p95_s']:.1f} | {b['p50_s']:.1f} / {b['p95_s']:.1f} | {b['llm_share']:.1%} |")
    if f["unbatched"]:
        a, b = f["unbatched"]["llm"], f["unbatched"]["rstitch"]
        print(f"| 1, batching off | {a['tokens_per_s']:.1f} | {b['tokens_per_s']:.1f} | "
              f"{b['tokens_per_s'] / a['tokens_per_s']:.2f}x | {a['p50_s']:.1f} / {a['p95_s']:.1f} "
              f"| {b['p50_s']:.1f} / {b['p95_s']:.1f} | {b['llm_share']:.1%} |")

    print("\nR-Stitch switch latency (median gap in a stream at a switch, ms) and median inter-token gap:")
    rows = [(f"{c}", row["rstitch"]) for c, row in f["levels"].items()]
    if f["shadow"]:
        rows += [(f"{c}, shadow prefill {f['shadow']['tokens']}", m) for c, m in f["shadow"]["levels"].items()]
    print("| streams | tok/s | p50 / p95 s | SLM -> LLM switch ms | LLM -> SLM switch ms | within a turn ms |")
    print("|---|---|---|---|---|---|")
    for label, m in rows:
        g = m["switch_gap_p50_s"]
        print(f"| {label} | {m['tokens_per_s']:.1f} | {m['p50_s']:.1f} / {m['p95_s']:.1f} | {_ms(g['slm_to_llm'])} "
              f"| {_ms(g['llm_to_slm'])} | {_ms(m['inter_token_p50_s'])} |")


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{1000 * seconds:.0f}"


if __name__ == "__main__":
    sys.exit(main())
