"""Throughput under concurrency, through the served system: LLM-only vs the other policies, side by side.

For each concurrency level, that many gRPC streams start together (one request each, different
prompts, greedy, the same token budget); the figures are aggregate generated tokens per second
(all tokens / wall time from the first request to the last finish) and p50/p95 request latency.
Policies (`--policies`, specs as in `rstitch bench`) alternate at every level, so drift of a shared
machine hits all alike. `verified` and `speculative` without `:k=` choose their draft lengths from
the cost profile (`--cost-profile`, default: the one `rstitch profile` saved for this machine). With
--compare-unbatched the service is then redeployed with batching off and concurrency 1 is measured
again (the batch-1 latency that batching must not make worse). With --shadow-prefill-tokens N the
service is redeployed with shadow prefill on and R-Stitch is measured again at every level. Switch
latency is the gap in a client's stream at a switch (last token before it to the first after it).

    python benchmarks/throughput.py                       # the embedded default pair
    python benchmarks/throughput.py --levels 1,4,8,16 --max-new-tokens 64 --compare-unbatched
    python benchmarks/throughput.py --policies llm,speculative,rstitch,verified --cost-profile off
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
    p.add_argument("--backend", default="auto", choices=("auto", "torch", "llamacpp"),
                   help="auto: llama.cpp for GGUF files on a CPU (the embedded pair), else torch")
    p.add_argument("--dtype", default="auto", help="torch: auto = bfloat16 (float16 on a GPU without it)")
    p.add_argument("--levels", default="1,4,8,16", help="concurrency levels (default: %(default)s)")
    p.add_argument("--policies", default="llm,speculative,rstitch,verified",
                   help="comma list of POLICY[:relaxed=R][:k=N][:tau=T]; llm comes first (default: %(default)s)")
    p.add_argument("--threshold", type=float, default=0.05,
                   help="tau for rstitch and verified (default: %(default)s)")
    p.add_argument("--cost-profile", default="auto", metavar="auto|off|FILE",
                   help="the servers' cost profile for cost-aware drafts (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--repeat", type=int, default=1, metavar="N",
                   help="run each level N times and report the last: the earlier runs let cost-aware policies "
                        "learn the front end's measured round speeds at that load (default: %(default)s)")
    p.add_argument("--compare-unbatched", action="store_true")
    p.add_argument("--threads", "--torch-threads", type=int, dest="threads",
                   help="CPU threads per worker's passes (default: all cores each)")
    p.add_argument("--shadow-prefill-tokens", type=int, default=0, metavar="N",
                   help="also measure R-Stitch with shadow prefill after N unseen tokens (default: off)")
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args()
    levels = [int(v) for v in args.levels.split(",")]
    if not all(1 <= c <= 64 for c in levels):
        p.error(f"--levels must be integers in [1, 64], got {args.levels}")
    from rstitch_core.config import parse_routing_spec

    try:
        args.routings = {spec: parse_routing_spec(spec, args.threshold)
                         for spec in ["llm"] + [s.strip() for s in args.policies.split(",") if s.strip() != "llm"]}
    except ValueError as err:
        p.error(f"--policies: {err}")
    figures = run(args, levels)
    print_table(figures, args)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return 0


def run(args, levels: list[int]) -> dict:
    from ray import serve

    from rstitch_cli.serve import local_service
    from rstitch_core.assets import ensure_default_pair
    from rstitch_core.models.loading import resolve_backend, resolve_dtype
    from services.app import build_app

    args.backend, _ = resolve_backend(args.backend, [args.slm, args.llm] if args.slm else ["default.gguf"], "cpu")
    slm, llm = (args.slm, args.llm) if args.slm else map(str, ensure_default_pair(backend=args.backend))
    args.dtype = "gguf" if args.backend == "llamacpp" else resolve_dtype(args.dtype, "cpu")  # recorded with the figures
    profile = serving_profile(args.cost_profile, slm, llm, args.dtype)
    port = free_port()
    figures: dict = {"levels": {}, "unbatched": None, "shadow": None, "threshold": args.threshold,
                     "max_new_tokens": args.max_new_tokens, "cpus": os.cpu_count(), "cost_profile": profile,
                     "policies": list(args.routings)}
    app = {"slm": slm, "llm": llm, "backend": args.backend, "slm_num_cpus": 0.5, "llm_num_cpus": 0.5,
           "max_sessions": max(64, max(levels)), "threads": args.threads, "cost_profile": profile,
           **({"prefill": "off"} if args.backend == "llamacpp" else {"dtype": args.dtype})}
    figures["threads"], figures["backend"] = args.threads, args.backend
    # Served as `rstitch serve` serves it (our gRPC server's actor, Serve's HTTP proxy).
    with local_service(app, port, free_port(), os.cpu_count(), http_port=free_port(), quiet=True) as address:
        warm_up(address, args)
        figures["repeat"] = args.repeat
        for c in levels:
            for _ in range(args.repeat):
                figures["levels"][c] = {spec: measure(address, routing, c, args)
                                        for spec, routing in args.routings.items()}
            print(f"concurrency {c}: " + ", ".join(f"{spec} {m['tokens_per_s']:.1f} tok/s"
                                                   for spec, m in figures["levels"][c].items()),
                  file=sys.stderr, flush=True)
        figures["batching"] = {role: serve.get_deployment_handle(f"{role}Worker", "rstitch").state.remote().result()
                               .get("batching") for role in ("SLM", "LLM")}
        if args.shadow_prefill_tokens:
            serve.run(build_app({**app, "shadow_prefill_tokens": args.shadow_prefill_tokens}), name="rstitch",
                      route_prefix="/")
            warm_up(address, args)
            figures["shadow"] = {"tokens": args.shadow_prefill_tokens,
                                 "levels": {c: measure(address, _rstitch(args), c, args) for c in levels}}
        if args.compare_unbatched:
            serve.run(build_app({**app, "batching": False}), name="rstitch", route_prefix="/")
            warm_up(address, args)
            figures["unbatched"] = {spec: measure(address, routing, 1, args) for spec, routing in args.routings.items()}
    return figures


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serving_profile(choice: str, slm: str, llm: str, dtype: str) -> str | None:
    """The cost profile file the servers load: --cost-profile FILE, or with auto the one saved for
    this pair, dtype and machine (None if there is none, or with off)."""
    if choice == "off":
        return None
    if choice != "auto":
        return str(Path(choice).resolve())
    from transformers import AutoConfig

    from rstitch_core.drafting.profile import default_path, gguf_key, profile_key

    key = (gguf_key(slm, llm) if dtype == "gguf"
           else profile_key(AutoConfig.from_pretrained(slm), AutoConfig.from_pretrained(llm), dtype, "cpu"))
    path = default_path(key)
    if not path.is_file():
        print(f"no saved cost profile for this machine ({path}); run `rstitch profile` for cost-aware drafts",
              file=sys.stderr)
        return None
    return str(path)


def _rstitch(args):
    return next((r for r in args.routings.values() if r.policy.value == "rstitch"), None) or args.routings["llm"]


def warm_up(address: str, args) -> None:
    from rstitch_core import SamplingParams
    from services.client import RStitchClient

    with RStitchClient(address) as client:
        for routing in args.routings.values():
            client.generate_result(prompt="warm up", sampling=SamplingParams(max_new_tokens=4), routing=routing)


def measure(address: str, routing, concurrency: int, args) -> dict:
    """`concurrency` streams started together, one request each; aggregate and per-request figures."""
    from rstitch_core import SamplingParams
    from rstitch_eval.bench_prompts import PROMPTS
    from services.client import RStitchClient
    from services.protocol import collect_responses

    sampling = SamplingParams(max_new_tokens=args.max_new_tokens)
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
                          "llm_passes": r["stats"]["llm"]["forward_passes"], "drafted": r["stats"]["drafted_tokens"],
                          "accepted": r["stats"]["accepted_tokens"],
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
            "tokens_per_llm_pass": tokens / max(1, sum(r["llm_passes"] for r in results)),
            "acceptance_rate": sum(r["accepted"] for r in results) / max(1, sum(r["drafted"] for r in results)),
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
          f"backend {f.get('backend', 'torch')}, threads per worker: {f.get('threads') or 'all'}, one request per stream, all streams started "
          f"together; cost profile: {f.get('cost_profile') or 'none (drafts run to their limit)'}")
    for role, b in (f.get("batching") or {}).items():
        if b and b["steps"]:
            print(f"{role} worker: {b['steps']} batched steps, mean {b['rows'] / b['steps']:.2f} sessions per step "
                  f"(max {b['max_rows']}), {b.get('deferred', 0)} passes deferred by the step budget")
    rows = [(str(c), row) for c, row in f["levels"].items()]
    if f["unbatched"]:
        rows.append(("1, batching off", f["unbatched"]))
    specs = list(next(iter(f["levels"].values())))
    print("| streams | " + " | ".join(f"{s} tok/s (ratio)" for s in specs) + " | "
          + " | ".join(f"{s} p50 / p95 s" for s in specs) + " |")
    print("|---" * (1 + 2 * len(specs)) + "|")
    for label, row in rows:
        base = row["llm"]["tokens_per_s"]
        print(f"| {label} | " + " | ".join(f"{m['tokens_per_s']:.1f} ({m['tokens_per_s'] / base:.2f}x)"
                                           for m in row.values())
              + " | " + " | ".join(f"{m['p50_s']:.1f} / {m['p95_s']:.1f}" for m in row.values()) + " |")
    print("\nLLM token share / tokens per LLM pass / draft acceptance:")
    print("| streams | " + " | ".join(specs) + " |")
    print("|---" * (1 + len(specs)) + "|")
    for label, row in rows:
        print(f"| {label} | " + " | ".join(f"{m['llm_share']:.0%} / {m.get('tokens_per_llm_pass', 1):.2f} / "
                                           f"{m.get('acceptance_rate', 0):.0%}" for m in row.values()) + " |")
    if "rstitch" not in specs:
        return

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
