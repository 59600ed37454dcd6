"""Projected latencies of recorded runs on a profiled machine: price each trajectory's passes.

A record that carries its passes ("passes": {"slm": [[n, kv], ...], "llm": [...]}, as
Engine.rollout returns them) is priced pass by pass. Records of results.jsonl as written today carry
counts only, so their passes are rebuilt from the counts, per policy:

- llm, slm: a prefill of the prompt, then one decode step per further generated token.
- speculative: R = generated - accepted rounds (each round emits its accepted drafts plus one LLM
  token), drafted/R drafts per round; the SLM prefills the prompt and decodes once per further
  draft; the LLM verifies each round in one pass over its drafts plus one token (the first round's
  pass also holds the prompt).
- rstitch, rstitch+: every SLM token and every discarded one is an SLM pass, every LLM token an LLM
  pass; each switch starts a turn whose first pass feeds what the model has not seen (the other
  model's tokens since its last turn, spread evenly over the turns).

Passes after the prompt are priced at the run's mean context, prompt + generated/2 (exact for the
fit, which is linear in kv). Everything is one row per pass (no batching). The figures are
projections from a cost profile, never measurements.
"""

from __future__ import annotations

import statistics

from rstitch_core.drafting.profile import CostProfile

VERIFYING = {"speculative", "verified"}  # policies whose LLM passes need a logit row per fed token
Pass = tuple[str, float, float, float, float]  # (model, n, kv, logits, how many such passes)


def record_passes(record: dict) -> list[Pass] | None:
    """The record's passes, recorded or rebuilt from its counts; None for a policy with no rule."""
    policy = record["policy"]
    if "passes" in record:
        return [(m, n, kv, n if m == "llm" and policy in VERIFYING else 1, 1)
                for m in ("slm", "llm") for n, kv in record["passes"].get(m, [])]
    prompt, generated = record["prompt_tokens"], record["generated_tokens"]
    mid = prompt + generated / 2
    if policy in ("llm", "slm"):
        return [(policy, prompt, 0, 1, 1), (policy, 1, mid, 1, max(0, generated - 1))]
    if policy == "speculative":
        return _speculative(record, prompt, mid)
    if policy in ("rstitch", "rstitch+"):
        return _stitched(record, prompt, mid)
    return None


def _speculative(r: dict, prompt: int, mid: float) -> list[Pass]:
    rounds = max(1, r["generated_tokens"] - r["accepted_tokens"])
    drafts = r["drafted_tokens"] / rounds
    return [("slm", prompt, 0, 1, 1), ("slm", 1, mid, 1, max(0, r["drafted_tokens"] - 1)),
            ("llm", prompt + drafts, 0, drafts + 1, 1), ("llm", drafts + 1, mid, drafts + 1, rounds - 1)]


def _stitched(r: dict, prompt: int, mid: float) -> list[Pass]:
    slm_passes = r["slm_tokens"] + r["discarded_tokens"]
    to_slm, to_llm = r["switches_llm_to_slm"], r["switches_slm_to_llm"]
    passes = [("slm", prompt, 0, 1, 1), ("slm", 1, mid, 1, max(0, slm_passes - 1 - to_slm))]
    if to_slm:
        passes.append(("slm", max(1.0, r["llm_tokens"] / to_slm), mid, 1, to_slm))
    if to_llm:
        fed = r["slm_tokens"] / to_llm  # the SLM's tokens since the LLM's last turn
        passes += [("llm", prompt + fed, 0, 1, 1), ("llm", fed + 1, mid, 1, to_llm - 1),
                   ("llm", 1, mid, 1, max(0, r["llm_tokens"] - to_llm))]
    return passes


def projected_seconds(record: dict, profile: CostProfile) -> float | None:
    passes = record_passes(record)
    if passes is None:
        return None
    return sum(count * profile.model(m).seconds(n, kv, 1, logits) for m, n, kv, logits, count in passes if count)


def project(records: list[dict], profile: CostProfile, baseline: str = "llm") -> dict:
    """Per configuration: projected mean latency and projected speedup over `baseline` on the
    problems both have; configurations without a pricing rule are listed as not priced."""
    by_config: dict[str, dict[int, float]] = {}
    unpriced = set()
    for r in records:
        seconds = projected_seconds(r, profile)
        if seconds is None:
            unpriced.add(r["config"])
        else:
            by_config.setdefault(r["config"], {})[r["problem_id"]] = seconds
    base = by_config.get(baseline, {})
    rows = []
    for label, times in by_config.items():
        row = {"config": label, "n": len(times), "projected_mean_latency_s": statistics.fmean(times.values())}
        common = sorted(set(times) & set(base))
        if common:
            row["projected_speedup"] = sum(base[i] for i in common) / sum(times[i] for i in common)
        rows.append(row)
    return {"profile": dict(vars(profile.key)), "rows": rows, "not_priced": sorted(unpriced)}


def projected_table(projection: dict) -> str:
    """Markdown, every figure labelled projected."""
    key = projection["profile"]
    lines = [f"Projected (not measured) on {key['hardware']} ({key['device']}, {key['dtype']}"
             + (f", {key['threads']} threads" if key.get("threads") else "") + f") from a cost profile of "
             f"{key['slm']} + {key['llm']}; passes rebuilt from recorded counts where not recorded, one row per pass.",
             "", "| config | n | projected mean latency s | projected speedup vs LLM |", "|---|---|---|---|"]
    for r in projection["rows"]:
        speedup = f"{r['projected_speedup']:.2f}x" if "projected_speedup" in r else "-"
        lines.append(f"| {r['config']} | {r['n']} | {r['projected_mean_latency_s']:.2f} | {speedup} |")
    if projection["not_priced"]:
        lines.append(f"\nnot priced (no pricing rule for their policy and no recorded passes): "
                     f"{', '.join(projection['not_priced'])}")
    return "\n".join(lines)
