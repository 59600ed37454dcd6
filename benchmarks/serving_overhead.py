"""Serving overhead: per-token time through the served system (Ray Serve + gRPC) vs the in-process engine.

Both run in one process tree on the same prompts, alternating per prompt so machine drift hits them
alike; prints medians and the ratio. Default: the embedded model pair, greedy.

    python benchmarks/serving_overhead.py --prompts 4 --max-new-tokens 96 --policy rstitch
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--slm"), p.add_argument("--llm")
    p.add_argument("--backend", default="auto", choices=("auto", "torch", "llamacpp"),
                   help="auto: llama.cpp for GGUF files on a CPU (the embedded pair), else torch")
    p.add_argument("--dtype", default="auto", help="torch: auto = bfloat16 (float16 on a GPU without it)")
    p.add_argument("--policy", default="rstitch")
    p.add_argument("--threshold", type=float, default=0.02)
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--threads", type=int, help="threads of each worker's passes (default: all cores)")
    p.add_argument("--max-new-tokens", type=int, default=96)
    args = p.parse_args()

    import torch

    from rstitch_cli.serve import local_service
    from rstitch_core import Engine, Generation, RoutingParams, SamplingParams
    from rstitch_core.assets import ensure_default_pair
    from rstitch_core.models.loading import resolve_backend, resolve_dtype
    from rstitch_eval.bench_prompts import PROMPTS
    from services.client import RStitchClient

    backend, _ = resolve_backend(args.backend, [args.slm, args.llm] if args.slm else ["default.gguf"], "cpu")
    slm, llm = (args.slm, args.llm) if args.slm else map(str, ensure_default_pair(backend=backend))
    args.dtype = "auto" if backend == "llamacpp" else resolve_dtype(args.dtype, "cpu")
    threads = args.threads or torch.get_num_threads()
    app = {"slm": slm, "llm": llm, "backend": backend, "dtype": args.dtype, "threads": threads, "prefill": "off",
           "cost_profile": None}
    engine = Engine.load(slm, llm, dtype=args.dtype, backend=backend)
    sampling = SamplingParams(max_new_tokens=args.max_new_tokens)
    routing = RoutingParams(policy=args.policy, threshold=args.threshold)
    rows = []
    # Served as `rstitch serve` serves it (our gRPC server's actor, Serve's HTTP proxy).
    with local_service(app, free_port(), free_port(), os.cpu_count(), http_port=free_port(), quiet=True) as address:
        with RStitchClient(address) as client:
            client.generate_result(prompt="warm up", sampling=SamplingParams(max_new_tokens=4), routing=routing)
            for i, prompt in enumerate(PROMPTS[:args.prompts]):
                messages = [{"role": "user", "content": prompt}]
                t = time.perf_counter()
                local = Generation.collect(engine.generate(messages=messages, sampling=sampling, routing=routing))
                local_s = time.perf_counter() - t
                t = time.perf_counter()
                remote = client.generate_result(messages=messages, sampling=sampling, routing=routing)
                remote_s = time.perf_counter() - t
                same = remote["token_ids"] == local.token_ids
                rows.append((local_s / len(local.token_ids), remote_s / len(remote["token_ids"]), same))
                print(f"prompt {i + 1}: in-process {1000 * rows[-1][0]:.1f} ms/token, served "
                      f"{1000 * rows[-1][1]:.1f} ms/token, same tokens: {same}", file=sys.stderr, flush=True)
    local_ms = 1000 * statistics.median(r[0] for r in rows)
    served_ms = 1000 * statistics.median(r[1] for r in rows)
    print(f"policy {args.policy}, backend {backend}, {len(rows)} prompts, {args.max_new_tokens} new tokens max, "
          f"{threads} threads")
    print(f"per-token time (median): in-process {local_ms:.1f} ms, served over gRPC {served_ms:.1f} ms, "
          f"ratio served/in-process {served_ms / local_ms:.3f}x, identical outputs {sum(r[2] for r in rows)}/{len(rows)}")
    return 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    sys.exit(main())
