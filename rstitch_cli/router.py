"""`rstitch router`: the R-Stitch+ router's training, rewarded by latency priced on the pair's cost profile.

  rstitch router profile --out COST.json [--slm --llm]          the cost profile (as `rstitch profile --out`)
  rstitch router train --dataset arith|gsm8k --out ROUTER.safetensors --tau T [--cost-model COST.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from rstitch_cli.common import add_model_args, load_engine, model_sources

GSM8K_TRAIN = range(500)  # development problems; 500-999 are kept for evaluating routers


def add_parser(sub) -> None:
    p = sub.add_parser("router", help="R-Stitch+: profile the pair's pass costs, train a router",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    modes = p.add_subparsers(dest="mode", required=True, parser_class=type(p))
    prof = modes.add_parser("profile", help="time the pair's passes and fit its cost profile (as rstitch profile)")
    prof.add_argument("--out", required=True, metavar="COST.json")
    prof.add_argument("--reps", type=int, help="time each point this many passes, one round (default: the "
                      "profiler's grid: repeated for 0.3 s, two rounds)")
    add_model_args(prof)
    prof.set_defaults(run=profile)
    t = modes.add_parser("train", help="supervised warm start, then RL fine-tuning (base models frozen)")
    t.add_argument("--out", required=True, metavar="ROUTER.safetensors", help="router file (report: <out>.json)")
    t.add_argument("--dataset", default="gsm8k", choices=["gsm8k", "gsm-symbolic", "arith"],
                   help="training problems: gsm8k 0-499, reasoning-gym's generated gsm-symbolic problems, or "
                   "the arith task's training split (default: %(default)s)")
    t.add_argument("--tau", type=float, required=True, help="the router is consulted where the SLM's entropy > tau")
    t.add_argument("--cost-model", metavar="COST.json",
                   help="a cost profile from `rstitch profile --out` (default: this machine's cached profile, "
                   "else measured now)")
    t.add_argument("--problems", type=int, default=64, help="training problems (default: %(default)s)")
    t.add_argument("--supervised-problems", type=int, default=32,
                   help="of those, how many give supervised labels (default: %(default)s)")
    t.add_argument("--supervised-epochs", type=int, default=200, help="(default: %(default)s)")
    t.add_argument("--recall", type=float, default=0.9, help="share of held-out 'LLM disagrees' positions "
                   "the router must hand over; sets its decision threshold (default: %(default)s)")
    t.add_argument("--rl-steps", type=int, default=20, help="0 = supervised only (default: %(default)s)")
    t.add_argument("--rl-problems-per-step", type=int, default=8, help="(default: %(default)s)")
    t.add_argument("--rl-group", type=int, default=8, help="rollouts per problem (default: %(default)s)")
    t.add_argument("--latency-weight", type=float, default=0.5,
                   help="lambda in R = acc - lambda*acc*L_hat, L_hat relative to LLM-only (default: %(default)s)")
    t.add_argument("--max-new-tokens", type=int, default=256, help="rollout budget (default: %(default)s)")
    t.add_argument("--width", type=int, default=64, help="router MLP width (default: %(default)s)")
    t.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    add_model_args(t)
    t.set_defaults(run=train)


def profile(args: argparse.Namespace) -> int:
    from rstitch_cli.profile import describe
    from rstitch_core.drafting.profile import CostProfile
    from rstitch_core.drafting.profiling import default_grid, profile_pair, stderr_log

    if args.reps is not None and args.reps < 1:
        raise ValueError(f"--reps must be >= 1, got {args.reps}")
    engine = load_engine(args)
    grid = default_grid(engine.llm.device)
    if args.reps is not None:
        grid = dataclasses.replace(grid, max_reps=args.reps, min_seconds=0.0, rounds=1)
    path = profile_pair(engine.slm, engine.llm, grid, log=stderr_log).save(args.out)
    print(describe(CostProfile.load(path), 256))
    print(f"rstitch router: wrote {path}", file=sys.stderr)
    return 0


def train(args: argparse.Namespace) -> int:
    from rstitch_core.drafting.profile import CostProfile
    from rstitch_core.drafting.profiling import cached_or_measured, stderr_log
    from rstitch_eval.tasks import get_task
    from rstitch_train.pipeline import train_router
    from rstitch_train.router import RLConfig, SupervisedConfig

    if not 0 <= args.tau <= 1:
        raise ValueError(f"--tau must be in [0, 1], got {args.tau}")
    if args.problems < 1 or not 0 <= args.supervised_problems <= args.problems:
        raise ValueError(f"need --problems >= 1 and 0 <= --supervised-problems <= --problems, "
                         f"got {args.problems} and {args.supervised_problems}")
    if args.dataset == "gsm8k" and args.problems > len(GSM8K_TRAIN):
        raise ValueError(f"--problems must be at most {len(GSM8K_TRAIN)} for gsm8k (problems 0-499 train, "
                         f"500-999 evaluate), got {args.problems}")
    rl = RLConfig(steps=args.rl_steps, problems_per_step=args.rl_problems_per_step, group=args.rl_group,
                  latency_weight=args.latency_weight, max_new_tokens=args.max_new_tokens, seed=args.seed)
    if not 0 < args.recall <= 1:
        raise ValueError(f"--recall must be in (0, 1], got {args.recall}")
    supervised = SupervisedConfig(epochs=args.supervised_epochs, recall=args.recall, seed=args.seed)
    task = get_task(args.dataset)
    if args.dataset == "gsm8k":
        import random

        ids = set(random.Random(args.seed).sample(list(GSM8K_TRAIN), args.problems))
        problems = [p for p in task.load(0, len(GSM8K_TRAIN)) if p.id in ids]
    elif args.dataset == "arith":
        from rstitch_eval.arith import load_arith

        problems = load_arith(0, args.problems, split="train")
    else:
        problems = task.load(0, args.problems)
    engine = load_engine(args)
    cost = (CostProfile.load(args.cost_model) if args.cost_model
            else cached_or_measured(engine.slm, engine.llm, log=stderr_log))
    slm_name = Path(model_sources(args, quiet=True)[0]).name
    report = train_router(engine, task, problems, slm_name, args.tau, Path(args.out), cost,
                          args.supervised_problems, supervised, rl, width=args.width)
    print_report(report)
    print(f"rstitch router: wrote {args.out} and {args.out}.json", file=sys.stderr)
    return 0


def print_report(report: dict) -> None:
    sup = report.get("supervised")
    if sup:
        print(f"supervised: {sup['decisions']} decisions, {sup['handover_labels']:.1%} labelled hand over; "
              f"train loss {sup['train_loss_before']:.3f} -> {sup['train_loss_after']:.3f}"
              + (f", validation loss {sup['val_loss_before']:.3f} -> {sup['val_loss_after']:.3f} "
                 f"(epoch {sup['epochs_kept']}); decision threshold {sup['decision_threshold']:.3f}: "
                 f"validation recall {sup['val_recall']:.1%}, hand over {sup['val_handover_rate']:.1%}"
                 if "val_loss_after" in sup and sup.get("val_recall") is not None else ""))
    for row in report.get("rl", []):
        print(f"rl step {row['step']:>3}: accuracy {row['accuracy']:.2f}, L_hat {row['relative_latency']:.2f}, "
              f"llm share {row['llm_token_share']:.2f}, {row['decisions']} decisions")
    print(f"trained in {report['seconds']} s")
