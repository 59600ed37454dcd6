"""Accuracy against speedup over LLM-only: one point per configuration, R-Stitch points joined over tau."""

from __future__ import annotations

from pathlib import Path

# R-Stitch first, so the baselines' markers are drawn on top of its line.
MARKERS = {"rstitch": ("o", "tab:blue", "R-Stitch"), "llm": ("s", "tab:purple", "LLM only"),
           "slm": ("^", "tab:green", "SLM only"), "speculative": ("D", "tab:orange", "speculative"),
           "rstitch+": ("*", "tab:red", "R-Stitch+ (router)"), "verified": ("P", "tab:brown", "verified")}


def plot_summary(summary: dict, path: Path, title: str = "GSM8K") -> Path:
    """Write a PNG; x is the speedup over LLM-only, or mean latency when the run has no LLM-only column."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    has_base = summary.get("baseline") is not None
    rows = [r for r in summary["configs"] if not has_base or r.get("common_n")]

    def x(r):
        return r["speedup"] if has_base else r["mean_latency_s"]

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=150)
    for policy, (marker, colour, name) in MARKERS.items():
        group = sorted((r for r in rows if r["policy"] == policy), key=lambda r: r["threshold"] or 0.0)
        if not group:
            continue
        acc = [100 * r["accuracy"] for r in group]
        err = [[100 * (r["accuracy"] - r["ci_low"]) for r in group], [100 * (r["ci_high"] - r["accuracy"]) for r in group]]
        ax.errorbar([x(r) for r in group], acc, yerr=err, fmt=marker + ("-" if policy == "rstitch" else ""),
                    color=colour, label=name, capsize=3, markersize=10 if policy == "rstitch+" else 7, linewidth=1.2)
        if policy in ("rstitch", "rstitch+", "verified"):
            for i, (r, a) in enumerate(zip(group, acc)):
                # verified's rules share one tau and may land on one spot: stack their labels
                dy = 4 - 10 * i if policy == "verified" else 4
                ax.annotate(_point_label(r), (x(r), a), textcoords="offset points", xytext=(6, dy), fontsize=8)
    if has_base:
        ax.axvline(1.0, color="grey", linewidth=0.6, linestyle=":")
    ax.set_xlabel("speedup over LLM-only (same run, common problems)" if has_base else "mean latency per problem (s)")
    ax.set_ylabel("accuracy (%), 95% Wilson interval")
    ax.set_title(f"{title}\n{summary['problems']} problems, greedy", fontsize=9)
    ax.margins(x=0.12)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


def _point_label(row: dict) -> str:
    """τ, and for verified the acceptance rule read from the configuration's label."""
    parts = [] if row.get("threshold") is None else [f"τ={row['threshold']:g}"]
    if row["policy"] == "verified":
        relaxed = next((o.split("=")[1] for o in row["config"].split(":") if o.startswith("relaxed=")), None)
        parts.append(f"relaxed {relaxed}" if relaxed else "exact")
    return ", ".join(parts)
