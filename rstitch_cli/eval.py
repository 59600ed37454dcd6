"""`rstitch eval`: GSM8K accuracy and speed of R-Stitch and the baselines, measured side by side.

  rstitch eval --out DIR [--limit N --offset K --policies ... --thresholds ...]   run (resumable)
  rstitch eval report --out DIR                                                   summary and plot again
  rstitch eval calibrate --out DIR (--target-llm-share S | --max-accuracy-drop D) pick tau
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rstitch_cli.common import add_model_args, load_engine, model_sources, pick_backend
from rstitch_core import RoutingParams, SamplingParams


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="evaluate policies on GSM8K (accuracy, latency, speedup, plot)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", nargs="?", default="run", choices=["run", "report", "calibrate"],
                   help="run the evaluation (default), rewrite the summary and plot from --out, or pick tau")
    p.add_argument("--out", required=True, metavar="DIR", help="results directory (results.jsonl, run.json, "
                   "summary.json, summary.md, accuracy_vs_speedup.png); a rerun resumes it")
    g = p.add_argument_group("run")
    g.add_argument("--dataset", default="gsm8k", choices=["gsm8k", "arith", "gsm-symbolic"],
                   help="gsm8k; arith, the synthetic task of `rstitch train-pair`; gsm-symbolic, "
                   "reasoning-gym's generated GSM-style problems (default: %(default)s)")
    g.add_argument("--limit", type=int, help="number of problems (default: all from --offset on)")
    g.add_argument("--offset", type=int, default=0, help="first problem id (default: %(default)s)")
    g.add_argument("--policies", default="llm,slm,speculative,rstitch",
                   help="comma list of llm, slm, speculative, rstitch, rstitch+ (default: %(default)s)")
    g.add_argument("--router", metavar="PATH", help="the R-Stitch+ router for the rstitch+ policy (it runs at the "
                   "router's tau); with --through-server the server must hold the same router")
    g.add_argument("--thresholds", default="0.001,0.01,0.02,0.05",
                   help="comma list of tau for rstitch, one configuration each (default: %(default)s)")
    g.add_argument("--draft-tokens", type=int, default=RoutingParams.draft_tokens,
                   help="draft limit k for speculative and verified (default: %(default)s)")
    g.add_argument("--max-new-tokens", type=int, default=512, help="budget per problem (default: %(default)s)")
    g.add_argument("--through-server", metavar="HOST:PORT", help="generate through a running `rstitch serve`")
    add_model_args(p)  # its --cost-profile FILE also makes `report` project latencies on that profile's machine
    c = p.add_argument_group("calibrate")
    c.add_argument("--target-llm-share", type=float, metavar="S", help="largest tau whose LLM token share >= S")
    c.add_argument("--max-accuracy-drop", type=float, metavar="D",
                   help="largest tau whose accuracy is at most D below LLM-only (0.02 = two points)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from rstitch_eval.gsm8k import DatasetError
    from rstitch_eval.runner import BackendError

    try:
        if args.mode == "calibrate":
            return calibrate(args)
        if args.mode == "report":
            given = getattr(args, "cost_profile", None)
            return report(Path(args.out), cost_profile=None if given in (None, "auto", "off") else given)
        return evaluate(args)
    except (DatasetError, BackendError) as err:
        print(f"rstitch eval: error: {err}", file=sys.stderr)
        return 1


def evaluate(args: argparse.Namespace) -> int:
    from rstitch_eval.runner import build_configs, check_settings, run_eval
    from rstitch_eval.tasks import get_task

    task = get_task(args.dataset)
    policies = split(args.policies)
    router = load_router_file(args.router) if args.router else None
    if router is not None and "rstitch+" not in policies:
        raise ValueError("--router is only used by the rstitch+ policy; add rstitch+ to --policies")
    configs = build_configs(policies, parse_thresholds(args.thresholds), args.draft_tokens,
                            router.config.tau if router is not None else None)
    sampling = SamplingParams(max_new_tokens=args.max_new_tokens)
    if args.offset < 0 or (args.limit is not None and args.limit < 1):
        raise ValueError(f"--offset must be >= 0 and --limit >= 1, got {args.offset} and {args.limit}")
    try:
        problems = task.load(args.offset, args.limit)
    except ValueError as err:
        raise ValueError(f"--{err}") from None  # Task messages start with the argument's name
    out = Path(args.out)
    settings = {"dataset": args.dataset, "prompt": task.prompt_version, "decoding": "greedy",
                "max_new_tokens": args.max_new_tokens, "draft_tokens": args.draft_tokens, **backend_settings(args)}
    if router is not None:
        settings["router"] = file_sha256(args.router)
    check_settings(out, settings)
    backend = make_backend(args, router)
    print(f"rstitch eval: {len(problems)} problems x {len(configs)} configurations "
          f"({', '.join(c.label for c in configs)}) -> {out}", file=sys.stderr, flush=True)
    try:
        run_eval(problems, configs, backend, out, sampling, task, after_problem=lambda records: refresh(out, records))
    except KeyboardInterrupt:
        print("\nrstitch eval: interrupted; finished records are kept, rerun the same command to resume",
              file=sys.stderr)
        try:
            report(out, quiet=True)
        except ValueError:  # nothing finished yet
            pass
        raise
    return report(out)


def backend_settings(args: argparse.Namespace) -> dict:
    """What identifies the models in run.json (results made with other models never mix)."""
    if args.through_server:
        if args.slm or args.llm:
            raise ValueError("--slm/--llm do not apply with --through-server (the server holds the models)")
        return {"backend": "server"}
    engine = pick_backend(args.backend, args.slm, args.llm, args.device, quiet=True)
    slm, llm = model_sources(args, backend=engine)
    settings = {"backend": "in-process", "slm": slm, "llm": llm, "dtype": args.dtype}
    if engine != "torch":  # runs made before there was a llama.cpp backend were torch runs, and resume as such
        settings.update(dtype="gguf", model_backend=engine)
    return settings


def make_backend(args: argparse.Namespace, router=None):
    from rstitch_eval.runner import engine_backend, server_backend

    if args.through_server:
        from services.client import RStitchClient

        return server_backend(RStitchClient(args.through_server))
    engine = load_engine(args)
    return engine_backend(engine, router.bind(engine.slm) if router is not None else None)


def load_router_file(path: str):
    from rstitch_core.router import LearnedRouter

    return LearnedRouter.load(path)


def file_sha256(path: str) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def report(out: Path, quiet: bool = False, cost_profile: str | None = None) -> int:
    from rstitch_eval.plot import plot_summary
    from rstitch_eval.runner import RESULTS_NAME, read_records
    from rstitch_eval.summary import markdown_table

    records = read_records(out / RESULTS_NAME)
    if not records:
        raise ValueError(f"{out} holds no results ({RESULTS_NAME} is missing or empty)")
    profile = load_cost_profile(cost_profile) if cost_profile is not None else None
    summary = refresh(out, records)
    png = plot_summary(summary, out / "accuracy_vs_speedup.png", title=plot_title(summary.get("settings", {})))
    if not quiet:
        print(markdown_table(summary))
        print(f"rstitch eval: wrote {out / 'summary.md'}, {out / 'summary.json'} and {png}", file=sys.stderr)
    if profile is not None:
        write_projection(out, records, profile, cost_profile)
    return 0


def load_cost_profile(path: str):
    from rstitch_core.drafting.profile import CostProfile

    return CostProfile.load(path)


def write_projection(out: Path, records: list[dict], profile, source: str) -> None:
    """Price the recorded trajectories under a saved profile; kept apart from the measured summary."""
    from rstitch_eval.projection import project, projected_table

    projection = project(records, profile)
    projection["cost_profile"] = str(source)
    (out / "projected.json").write_text(json.dumps(projection, indent=1) + "\n")
    (out / "projected.md").write_text(projected_table(projection) + "\n")
    print("\n" + projected_table(projection))
    print(f"rstitch eval: wrote {out / 'projected.md'} and {out / 'projected.json'} (projected, not measured)",
          file=sys.stderr)


def refresh(out: Path, records: list[dict]) -> dict:
    from rstitch_eval.runner import SETTINGS_NAME
    from rstitch_eval.summary import summarize, write_summary

    summary = summarize(records)
    settings_path = out / SETTINGS_NAME
    summary["settings"] = json.loads(settings_path.read_text()) if settings_path.is_file() else {}
    write_summary(out, summary)
    return summary


def calibrate(args: argparse.Namespace) -> int:
    from rstitch_eval.calibrate import choose_threshold
    from rstitch_eval.runner import RESULTS_NAME, read_records
    from rstitch_eval.summary import summarize

    out = Path(args.out)
    records = read_records(out / RESULTS_NAME)
    if not records:
        raise ValueError(f"{out} holds no results ({RESULTS_NAME} is missing or empty); run `rstitch eval` first")
    choice = choose_threshold(summarize(records), args.target_llm_share, args.max_accuracy_drop)
    print("\n".join(choice.explanation))
    return 0


def plot_title(settings: dict) -> str:
    dataset = {"gsm8k": "GSM8K", "arith": "arithmetic chains", "gsm-symbolic": "GSM-Symbolic (reasoning-gym)"}.get(
        settings.get("dataset"), "GSM8K")
    if settings.get("backend") == "in-process":
        return f"{dataset}, {Path(settings['slm']).name} + {Path(settings['llm']).name}"
    return dataset


def split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def parse_thresholds(value: str) -> list[float]:
    try:
        return [float(v) for v in split(value)]
    except ValueError:
        raise ValueError(f"--thresholds must be a comma list of numbers in [0, 1], got {value!r}") from None
