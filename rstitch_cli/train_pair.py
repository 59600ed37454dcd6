"""`rstitch train-pair`: train a small SLM/LLM pair on the synthetic arithmetic-chain task (minutes on a CPU).

The pair is written as two Hugging Face folders (OUT/slm, OUT/llm) sharing one tokenizer, plus
OUT/pair.json (sizes, steps, training time, exact match). Use it like any pair:
  rstitch eval --dataset arith --slm OUT/slm --llm OUT/llm --limit 200 --out DIR
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path


def add_parser(sub) -> None:
    from rstitch_train.pair import LLM_SPEC, SLM_SPEC

    p = sub.add_parser("train-pair", help="train an SLM/LLM pair on the synthetic arithmetic task",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    p.add_argument("--slm-steps", type=int, default=SLM_SPEC.steps, help="(default: %(default)s)")
    p.add_argument("--llm-steps", type=int, default=LLM_SPEC.steps, help="(default: %(default)s)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from rstitch_train.pair import LLM_SPEC, SLM_SPEC, train_pair

    if args.slm_steps < 1 or args.llm_steps < 1:
        raise ValueError(f"--slm-steps and --llm-steps must be >= 1, got {args.slm_steps} and {args.llm_steps}")
    report = train_pair(Path(args.out), args.seed, replace(SLM_SPEC, steps=args.slm_steps),
                        replace(LLM_SPEC, steps=args.llm_steps))
    for name, m in report["models"].items():
        print(f"{name}: d={m['hidden']} x {m['layers']} layers, {m['params']:,} params, {m['steps']} steps in "
              f"{m['train_seconds']} s, exact match {m['exact_match']:.1%}")
    print(f"rstitch train-pair: wrote {args.out}/slm, {args.out}/llm and {args.out}/pair.json", file=sys.stderr)
    return 0
