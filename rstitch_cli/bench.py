"""`rstitch bench`: per-token costs and R-Stitch vs baselines, measured side by side in one run.

Prints medians and ratios (this kind of machine is noisy): each model's decode step, partial prefills
of k tokens relative to one decode step, and end-to-end wall time of every policy on the same prompts,
policies interleaved per prompt so drift hits them alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from rstitch_cli.common import add_model_args, load_engine
from rstitch_core import Engine, Generation, RoutingParams, SamplingParams
from rstitch_core.config import parse_routing_spec
from rstitch_core.models.backend import ModelBackend
from rstitch_eval.bench_prompts import PROMPTS

PREFILL_SIZES = (1, 8, 32, 128)


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="measure per-token costs and policy wall times side by side",
                       description=__doc__.splitlines()[0])
    add_model_args(p)
    p.add_argument("--prompts", type=int, default=4, help=f"how many built-in prompts, 1-{len(PROMPTS)} (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="budget per request (default: %(default)s)")
    p.add_argument("--policies", default="llm,rstitch,slm,speculative,verified",
                   help="comma list of POLICY[:relaxed=R][:k=N][:tau=T], e.g. verified:relaxed=0.3 or verified:k=8:tau=0.1 "
                        "(a pinned k turns the cost-aware draft length off) (default: %(default)s)")
    p.add_argument("--threshold", type=float, default=RoutingParams.threshold,
                   help="tau for rstitch and verified (default: %(default)s)")
    p.add_argument("--draft-tokens", type=int, default=None,
                   help="draft limit for speculative / verified (default: 4 / 8)")
    p.add_argument("--reps", type=int, default=9, help="repetitions of each micro-benchmark (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object")
    p.set_defaults(run=run)


def decode_seconds(runner: ModelBackend, context: list[int], reps: int) -> float:
    """Median wall time of one decode step at about len(context) cached tokens."""
    cache = runner.new_cache()
    token = int(runner.forward(cache, context).logits[-1].argmax())
    times = []
    for _ in range(reps + 1):
        out = runner.forward(cache, [token])
        token = int(out.logits[-1].argmax())
        times.append(out.seconds)
    runner.release(cache)
    return statistics.median(times[1:])


def prefill_seconds(runner: ModelBackend, context: list[int], k: int, reps: int) -> float:
    """Median wall time of a partial prefill of k tokens on top of a cache holding `context`."""
    cache = runner.new_cache()
    runner.forward(cache, context)
    extra = (context * (k // len(context) + 1))[:k]
    times = []
    for _ in range(reps + 1):
        times.append(runner.forward(cache, extra).seconds)
        cache.crop(len(context))
    runner.release(cache)
    return statistics.median(times[1:])


def model_costs(engine: Engine, context: list[int], reps: int) -> dict:
    costs = {}
    for name, runner in (("slm", engine.slm), ("llm", engine.llm)):
        decode = decode_seconds(runner, context, reps)
        costs[name] = {"decode_ms": 1000 * decode,
                       "prefill_ratio": {k: prefill_seconds(runner, context, k, reps) / decode for k in PREFILL_SIZES}}
    costs["llm_over_slm_decode"] = costs["llm"]["decode_ms"] / costs["slm"]["decode_ms"]
    return costs


def end_to_end(engine: Engine, prompts: list[str], configs: dict[str, RoutingParams], sampling: SamplingParams) -> dict:
    runs: dict[str, list[dict]] = {label: [] for label in configs}
    for i, prompt in enumerate(prompts):
        ids = engine.encode(messages=[{"role": "user", "content": prompt}])
        for label, routing in configs.items():
            start = time.perf_counter()
            g = Generation.collect(engine.generate(prompt_ids=ids, sampling=sampling, routing=routing))
            s = g.stats
            runs[label].append({"seconds": time.perf_counter() - start, "tokens": len(g.token_ids),
                                "llm_share": s.llm_token_share, "switches": s.switches_slm_to_llm + s.switches_llm_to_slm,
                                "drafted": s.drafted_tokens, "accepted": s.accepted_tokens,
                                "llm_passes": s.llm.forward_passes})
            print(f"  prompt {i + 1}/{len(prompts)} {label:<22} {runs[label][-1]['seconds']:6.2f}s "
                  f"{len(g.token_ids):4d} tokens", file=sys.stderr, flush=True)
    base = runs.get("llm")
    summary = {}
    for name, rs in runs.items():
        row = {"median_seconds": statistics.median(r["seconds"] for r in rs),
               "tokens_per_second": sum(r["tokens"] for r in rs) / sum(r["seconds"] for r in rs),
               "mean_tokens": statistics.mean(r["tokens"] for r in rs),
               "llm_token_share": sum(r["llm_share"] * r["tokens"] for r in rs) / max(1, sum(r["tokens"] for r in rs)),
               "mean_switches": statistics.mean(r["switches"] for r in rs),
               "acceptance_rate": sum(r["accepted"] for r in rs) / max(1, sum(r["drafted"] for r in rs)),
               "tokens_per_llm_pass": sum(r["tokens"] for r in rs) / max(1, sum(r["llm_passes"] for r in rs))}
        if base:
            row["speedup_vs_llm"] = statistics.median(b["seconds"] / r["seconds"] for b, r in zip(base, rs))
            row["per_token_speedup_vs_llm"] = row["tokens_per_second"] / (
                sum(r["tokens"] for r in base) / sum(r["seconds"] for r in base))
        summary[name] = row
    return summary


def run(args: argparse.Namespace) -> int:
    if not 1 <= args.prompts <= len(PROMPTS):
        raise ValueError(f"--prompts must be in [1, {len(PROMPTS)}], got {args.prompts}")
    if args.reps < 1:
        raise ValueError(f"--reps must be >= 1, got {args.reps}")
    configs = {spec: parse_routing_spec(spec, args.threshold, args.draft_tokens)  # validate before loading
               for spec in (p.strip() for p in args.policies.split(",")) if spec}
    sampling = SamplingParams(max_new_tokens=args.max_new_tokens)
    engine = load_engine(args)
    prompts = PROMPTS[:args.prompts]
    context = engine.encode(messages=[{"role": "user", "content": PROMPTS[0]}])
    print("measuring per-token costs ...", file=sys.stderr, flush=True)
    costs = model_costs(engine, context, args.reps)
    print("running policies side by side ...", file=sys.stderr, flush=True)
    Generation.collect(engine.generate(prompt_ids=context, sampling=SamplingParams(max_new_tokens=4)))  # warm-up
    results = {"context_tokens": len(context), "costs": costs,
               "policies": end_to_end(engine, prompts, configs, sampling),
               "threshold": args.threshold, "max_new_tokens": args.max_new_tokens, "prompts": len(prompts)}
    print(json.dumps(results, indent=1) if args.json else report(results))
    return 0


def report(r: dict) -> str:
    c = r["costs"]
    lines = [f"per-token cost at {r['context_tokens']} context tokens (median)",
             f"  decode step: slm {c['slm']['decode_ms']:.1f} ms, llm {c['llm']['decode_ms']:.1f} ms "
             f"(llm/slm {c['llm_over_slm_decode']:.2f}x)",
             "  partial prefill of k tokens / one decode step:"]
    for name in ("slm", "llm"):
        lines.append(f"    {name}: " + ", ".join(f"k={k}: {v:.2f}x" for k, v in c[name]["prefill_ratio"].items()))
    lines.append(f"end to end on {r['prompts']} prompts, {r['max_new_tokens']} new tokens max, tau={r['threshold']}")
    lines.append(f"  {'policy':<22}{'median s':>9}{'tok/s':>8}{'tokens':>8}{'llm share':>10}{'switches':>9}"
                 f"{'accept':>8}{'tok/LLM pass':>13}{'speedup':>9}{'tok/s ratio':>12}")
    for name, p in r["policies"].items():
        lines.append(f"  {name:<22}{p['median_seconds']:9.2f}{p['tokens_per_second']:8.2f}{p['mean_tokens']:8.1f}"
                     f"{p['llm_token_share']:10.1%}{p['mean_switches']:9.1f}{p['acceptance_rate']:8.1%}"
                     f"{p['tokens_per_llm_pass']:13.2f}"
                     f"{p.get('speedup_vs_llm', float('nan')):8.2f}x{p.get('per_token_speedup_vs_llm', float('nan')):11.2f}x")
    lines.append("  speedup = median over prompts of (llm-only wall time / policy wall time), same prompts, same run")
    return "\n".join(lines)
