"""What a batched multi-token pass costs next to a batched decode step, and what drafting could gain.

Drafting pays under load only where a pass over b rows x (k + 1) tokens costs about one b-row
decode step. This times both models of the pair over b rows x n new tokens (b in --rows, n in 1 and
k + 1 for k in --drafts) at --context cached tokens, through the workers' batched path, and prints
the upper bound of lockstep drafting at b streams: every row drafts k tokens together (k b-row SLM
steps) and the LLM verifies all rows in one pass, with per-token acceptance a:

    bound(b) = max over k of  E[tokens](a, k) / (k T_slm(b, 1) + T_llm(b, k + 1))  x  T_llm(b, 1)

No serving overhead, no rows out of step, no SLM/LLM contention: a real server gets less.

    python benchmarks/batch_pass_costs.py --rows 1,4,8,16 --drafts 2,4,8
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default="1,4,8,16", help="batch rows b (default: %(default)s)")
    p.add_argument("--drafts", default="2,4,8", help="draft lengths k (default: %(default)s)")
    p.add_argument("--acceptance", default="0.9,0.97", help="per-token acceptance rates (default: %(default)s)")
    p.add_argument("--context", type=int, default=256, help="cached tokens per row (default: %(default)s)")
    p.add_argument("--dtype", default="auto", help="auto: bfloat16 (float16 on a GPU without it)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", metavar="FILE", help="also write the timings here")
    args = p.parse_args()
    rows = [int(b) for b in args.rows.split(",")]
    drafts = [int(k) for k in args.drafts.split(",")]
    rates = [float(a) for a in args.acceptance.split(",")]

    import torch

    from rstitch_core.assets import ensure_default_pair
    from rstitch_core.drafting.control import expected_tokens
    from rstitch_core.drafting.profile import hardware_name
    from rstitch_core.drafting.profiling import Grid, measure
    from rstitch_core.models.loading import load_model, resolve_dtype

    dtype = resolve_dtype(args.dtype, args.device)
    grid = Grid(contexts=(args.context,), sizes=(1,), prefills=(), batch_rows=tuple(rows),
                batch_sizes=tuple(sorted({1, *(k + 1 for k in drafts)})), min_seconds=0.5, max_reps=3, rounds=2)
    seconds = {}
    for name, source in zip(("slm", "llm"), ensure_default_pair(progress=False)):
        runner = load_model(str(source), dtype, args.device, name)
        points, batched = measure(runner, grid)
        if not batched:
            raise SystemExit(f"{name}: this model has no batched path; nothing to measure")
        seconds[name] = {(b, n): s for n, kv, b, _, s in points if kv == args.context and b in rows}
        del runner
    print(f"# {hardware_name(torch.device(args.device))}, {dtype}, {args.context} cached tokens per row")
    print("| rows | LLM b-row step ms | " + " | ".join(f"LLM {k + 1} tok/row (steps)" for k in drafts)
          + " | SLM b-row step ms | " + " | ".join(f"bound a={a}" for a in rates) + " |")
    print("|" + "---|" * (3 + len(drafts) + len(rates)))
    report = []
    for b in rows:
        llm, slm = seconds["llm"], seconds["slm"]
        step = llm[(b, 1)]
        bounds = {a: max(expected_tokens(a, k) / (k * slm[(b, 1)] + llm[(b, k + 1)]) * step for k in drafts)
                  for a in rates}
        print(f"| {b} | {step * 1e3:.0f} | " + " | ".join(f"{llm[(b, k + 1)] * 1e3:.0f} ({llm[(b, k + 1)] / step:.2f})"
                                                          for k in drafts)
              + f" | {slm[(b, 1)] * 1e3:.0f} | " + " | ".join(f"{bounds[a]:.2f}x" for a in rates) + " |")
        report.append({"rows": b, "llm": {str(n): s for (bb, n), s in llm.items() if bb == b},
                       "slm": {str(n): s for (bb, n), s in slm.items() if bb == b},
                       "bound": {str(a): v for a, v in bounds.items()}})
    if args.json:
        Path(args.json).write_text(json.dumps({"dtype": dtype, "context": args.context, "rows": report}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
