"""Where R-Stitch's time goes in an `rstitch eval` run: kept SLM tokens, discarded SLM passes, LLM
tokens, and the rest (partial prefills and per-turn overhead), priced per problem by that problem's
own SLM-only and LLM-only runs in the same eval.

    python benchmarks/stitch_costs.py results/gsm8k-dev

For each rstitch configuration it prints the measured speedup over LLM-only, the speedup the same
LLM token share would give if switches cost nothing, and the LLM share at which a free-switching
R-Stitch would reach 2x. Needs the `llm` and `slm` configurations in the run.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path


def load(run: Path) -> dict[str, dict[int, dict]]:
    """{config: {problem_id: record}} from `run`/results.jsonl."""
    by_config: dict[str, dict[int, dict]] = defaultdict(dict)
    with open(run / "results.jsonl", encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            by_config[record["config"]][record["problem_id"]] = record
    return by_config


def breakdown(by_config: dict[str, dict[int, dict]], config: str) -> dict:
    """Sums over the problems that the config, LLM-only and SLM-only all finished."""
    llm, slm, runs = by_config["llm"], by_config["slm"], by_config[config]
    problems = sorted(p for p in set(runs) & set(llm) & set(slm)
                      if llm[p]["generated_tokens"] and slm[p]["generated_tokens"])
    t = defaultdict(float)
    for p in problems:
        r = runs[p]
        per_llm = llm[p]["latency_s"] / llm[p]["generated_tokens"]  # s per LLM token, this problem
        per_slm = slm[p]["latency_s"] / slm[p]["generated_tokens"]
        t["measured"] += r["latency_s"]
        t["llm_only"] += llm[p]["latency_s"]
        t["slm_kept"] += per_slm * r["slm_tokens"]
        t["slm_discarded"] += per_slm * r["discarded_tokens"]
        t["llm_tokens"] += per_llm * r["llm_tokens"]
        t["slm_per_token"] += per_slm * r["generated_tokens"]
        t["llm_per_token"] += per_llm * r["generated_tokens"]
        t["tokens"] += r["generated_tokens"]
        t["llm_count"] += r["llm_tokens"]
        t["switches"] += r["switches"]
    t["rest"] = t["measured"] - t["slm_kept"] - t["slm_discarded"] - t["llm_tokens"]
    # Same token count at LLM share s, switches free: slm_per_token * (1 - s) + llm_per_token * s.
    ratio = t["llm_per_token"] / t["slm_per_token"]
    share = t["llm_count"] / t["tokens"]
    free = t["llm_only"] / (t["slm_per_token"] * (1 - share) + t["llm_per_token"] * share)
    share_for_2x = (t["llm_only"] / 2 - t["slm_per_token"]) / (t["llm_per_token"] - t["slm_per_token"])
    return {"problems": len(problems), "speedup": t["llm_only"] / t["measured"], "llm_share": share,
            "tokens_per_switch": t["tokens"] / max(t["switches"], 1), "cost_ratio": ratio,
            "free_switch_speedup": free, "share_for_2x": share_for_2x,
            "time_shares": {k: t[k] / t["measured"] for k in ("slm_kept", "slm_discarded", "llm_tokens", "rest")}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="an `rstitch eval --out` folder with llm, slm and rstitch configurations")
    args = p.parse_args()
    by_config = load(args.run)
    if not {"llm", "slm"} <= set(by_config):
        p.error(f"{args.run} needs the llm and slm configurations, has {sorted(by_config)}")
    configs = [c for c in by_config if c.startswith("rstitch")]
    print("| config | problems | speedup | LLM token share | tokens per switch | time: SLM kept / SLM discarded "
          "/ LLM / rest | speedup if switches were free | LLM share for 2x if free |")
    print("|---|---|---|---|---|---|---|---|")
    for config in configs:
        b = breakdown(by_config, config)
        s = b["time_shares"]
        print(f"| {config} | {b['problems']} | {b['speedup']:.2f}x | {b['llm_share']:.1%} | {b['tokens_per_switch']:.1f} "
              f"| {s['slm_kept']:.0%} / {s['slm_discarded']:.0%} / {s['llm_tokens']:.0%} / {s['rest']:.0%} "
              f"| {b['free_switch_speedup']:.2f}x | {b['share_for_2x']:.1%} |")
    print(f"\nLLM / SLM time per generated token (LLM-only vs SLM-only runs of the same problems): "
          f"{b['cost_ratio']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
