"""Pick tau from a calibration slice: the largest tau (the fastest) that still meets a target.

Targets: an LLM token share of at least S (token-weighted), or an accuracy drop against LLM-only of
at most D (absolute, on the problems both finished: 0.02 = two points). A larger tau hands fewer
tokens to the LLM, so the largest qualifying tau is the cheapest one that meets the target.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Choice:
    threshold: float
    row: dict
    explanation: list[str]


def choose_threshold(summary: dict, min_llm_share: float | None = None,
                     max_accuracy_drop: float | None = None) -> Choice:
    """The chosen tau with a table of every candidate; ValueError if none qualifies or the input is unusable."""
    if (min_llm_share is None) == (max_accuracy_drop is None):
        raise ValueError("give exactly one target: --target-llm-share S or --max-accuracy-drop D")
    target = min_llm_share if min_llm_share is not None else max_accuracy_drop
    if not 0 <= target <= 1:
        raise ValueError(f"the target must be a fraction in [0, 1], got {target}")
    rows = sorted((r for r in summary["configs"] if r["policy"] == "rstitch"), key=lambda r: r["threshold"])
    if not rows:
        raise ValueError("the results hold no rstitch@<tau> configurations to choose from")
    if max_accuracy_drop is not None and summary.get("baseline") is None:
        raise ValueError("an accuracy-drop target needs LLM-only results in the same run (add the llm policy)")

    def qualifies(r: dict) -> bool:
        if min_llm_share is not None:
            return r["llm_token_share"] >= min_llm_share
        return r.get("common_n", 0) > 0 and -r["accuracy_delta"] <= max_accuracy_drop

    goal = (f"LLM token share >= {min_llm_share:.1%}" if min_llm_share is not None
            else f"accuracy drop vs LLM-only <= {100 * max_accuracy_drop:.1f} points")
    lines = [f"target: {goal}; candidates (calibration slice of {summary['problems']} problems):"]
    for r in rows:
        drop = f"{-100 * r['accuracy_delta']:+.1f} pts" if r.get("common_n") else "n/a"
        speed = f"{r['speedup']:.2f}x" if r.get("common_n") else "n/a"
        lines.append(f"  tau={r['threshold']:<8g} llm share {r['llm_token_share']:6.1%}  accuracy {r['accuracy']:6.1%} "
                     f"(drop {drop})  speedup {speed}  n={r['n']}  {'meets' if qualifies(r) else 'misses'}")
    passing = [r for r in rows if qualifies(r)]
    if not passing:
        raise ValueError(f"no tau meets the target ({goal}); " + "; ".join(line.strip() for line in lines[1:]))
    best = passing[-1]
    lines.append(f"chosen: tau={best['threshold']:g}, the largest tau that meets the target "
                 "(larger tau = fewer LLM tokens = faster)")
    if max_accuracy_drop is not None:
        lines.append(f"note: on {best['common_n']} problems one problem is {100 / best['common_n']:.2f} points; "
                     f"the paired McNemar p of this choice vs LLM-only is {best['mcnemar_p']:.2g}")
    return Choice(best["threshold"], best, lines)
