"""Per-configuration figures from the per-problem records, and summary.json / summary.md.

Speedup over LLM-only is measured in the same run and only over the problems both have finished:
sum of LLM-only latencies / sum of the configuration's latencies (and, less sensitive to a few long
problems, the median of the per-problem ratios). The LLM token share is token-weighted (all LLM
tokens / all generated tokens). The paired comparison counts problems one got right and the other
wrong, with an exact two-sided McNemar p-value.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from pathlib import Path

BASELINE = "llm"
Z95 = 1.959963984540054
POLICY_ORDER = {"llm": 0, "slm": 1, "speculative": 2, "rstitch": 3, "rstitch+": 4}


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials (95% by default); (0, 1) when n is 0."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_p(b: int, c: int) -> float:
    """Exact two-sided McNemar test on the discordant counts b and c."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


def config_key(record: dict) -> tuple:
    return POLICY_ORDER.get(record["policy"], 9), record.get("threshold") or 0.0, record["config"]


def summarize(records: list[dict]) -> dict:
    """{"problems": number of distinct problems, "baseline": "llm" or None, "configs": [row, ...]}."""
    by_config: dict[str, dict[int, dict]] = defaultdict(dict)
    for r in records:
        by_config[r["config"]][r["problem_id"]] = r
    base = by_config.get(BASELINE)
    rows = [config_row(label, by_problem, base)
            for label, by_problem in sorted(by_config.items(), key=lambda kv: config_key(next(iter(kv[1].values()))))]
    return {"problems": len({r["problem_id"] for r in records}), "baseline": BASELINE if base else None,
            "configs": rows}


def config_row(label: str, by_problem: dict[int, dict], base: dict[int, dict] | None) -> dict:
    rs = list(by_problem.values())
    n, right = len(rs), sum(r["correct"] for r in rs)
    latencies = [r["latency_s"] for r in rs]
    tokens = sum(r["generated_tokens"] for r in rs)
    low, high = wilson_interval(right, n)
    first = rs[0]
    row = {"config": label, "policy": first["policy"], "threshold": first.get("threshold"), "n": n,
           "correct": right, "accuracy": right / n, "ci_low": low, "ci_high": high,
           "mean_latency_s": statistics.fmean(latencies), "median_latency_s": statistics.median(latencies),
           "llm_token_share": sum(r["llm_tokens"] for r in rs) / tokens if tokens else 0.0,
           "mean_generated_tokens": tokens / n, "mean_switches": statistics.fmean(r["switches"] for r in rs),
           "truncated": sum(r["finish_reason"] in ("length", "context") for r in rs) / n}
    if base is not None:
        row.update(paired_vs_baseline(by_problem, base))
    return row


def paired_vs_baseline(by_problem: dict[int, dict], base: dict[int, dict]) -> dict:
    common = sorted(set(by_problem) & set(base))
    if not common:
        return {"common_n": 0}
    mine = [by_problem[i] for i in common]
    theirs = [base[i] for i in common]
    only_mine = sum(m["correct"] and not t["correct"] for m, t in zip(mine, theirs))
    only_base = sum(t["correct"] and not m["correct"] for m, t in zip(mine, theirs))
    return {"common_n": len(common),
            "speedup": sum(t["latency_s"] for t in theirs) / sum(m["latency_s"] for m in mine),
            "median_speedup": statistics.median(t["latency_s"] / m["latency_s"] for m, t in zip(mine, theirs)),
            "accuracy_delta": (sum(m["correct"] for m in mine) - sum(t["correct"] for t in theirs)) / len(common),
            "only_this_right": only_mine, "only_llm_right": only_base,
            "mcnemar_p": mcnemar_p(only_mine, only_base)}


def write_summary(out_dir: Path, summary: dict) -> None:
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out_dir / "summary.md").write_text(markdown_table(summary) + "\n")


def markdown_table(summary: dict) -> str:
    lines = [(f"{summary['problems']} problems; accuracy with a Wilson 95% interval; speedup = sum of LLM-only "
              "latencies / sum of this configuration's latencies on the problems both finished (median of "
              "per-problem ratios in brackets); LLM share is token-weighted; vs LLM = problems only this / only "
              "LLM-only got right (exact McNemar p)."), "",
             ("| config | n | accuracy (95% CI) | mean latency s | median latency s | speedup vs LLM | LLM token share "
              "| mean tokens | switches | truncated | vs LLM |"),
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary["configs"]:
        speedup = (f"{r['speedup']:.2f}x ({r['median_speedup']:.2f}x)" if r.get("common_n") else "-")
        paired = (f"+{r['only_this_right']} / -{r['only_llm_right']} (p={r['mcnemar_p']:.2g})"
                  if r.get("common_n") and r["config"] != BASELINE else "-")
        lines.append(f"| {r['config']} | {r['n']} | {r['accuracy']:.1%} ({r['ci_low']:.1%}-{r['ci_high']:.1%}) "
                     f"| {r['mean_latency_s']:.2f} | {r['median_latency_s']:.2f} | {speedup} "
                     f"| {r['llm_token_share']:.1%} | {r['mean_generated_tokens']:.1f} | {r['mean_switches']:.1f} "
                     f"| {r['truncated']:.0%} | {paired} |")
    return "\n".join(lines)
