"""`rstitch generate`: one request, streamed to the terminal (coloured by source) or as one JSON object."""

from __future__ import annotations

import argparse
import json
import sys

from rstitch_cli.common import add_model_args, load_engine
from rstitch_core import FinishEvent, Generation, Policy, RoutingParams, SamplingParams, SwitchEvent, TokenEvent
from rstitch_core.config import DEFAULT_THRESHOLD, NoRouter

COLOURS = {"slm": "\033[32m", "llm": "\033[35m"}  # green: SLM, magenta: LLM
RESET = "\033[0m"


def add_parser(sub) -> None:
    p = sub.add_parser("generate", help="generate one completion", description="Generate one completion "
                       "with R-Stitch or a baseline policy. Text mode colours each token by the model that "
                       "wrote it (green: SLM, magenta: LLM) when stdout is a terminal.")
    add_model_args(p)
    add_prompt_args(p)
    add_request_args(p)
    p.add_argument("--router", metavar="PATH", help="R-Stitch+ router file for --policy rstitch+ "
                   "(made by `rstitch router train`; it runs at the router's tau)")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object instead of streaming")
    p.set_defaults(run=run)


def add_prompt_args(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="raw prompt text")
    src.add_argument("--messages", help='chat messages as JSON, e.g. \'[{"role": "user", "content": "..."}]\', '
                     "or @FILE to read them from a file")


def add_request_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("routing and sampling")
    g.add_argument("--policy", default=RoutingParams.policy.value,
                   help="rstitch | rstitch+ | llm | slm | speculative | verified (default: %(default)s)")
    g.add_argument("--threshold", type=float, help=f"entropy threshold tau in [0, 1] (default: "
                   f"{RoutingParams.threshold}; rstitch+ runs at its router's tau)")
    add_draft_args(g)
    g.add_argument("--max-new-tokens", type=int, default=SamplingParams.max_new_tokens,
                   help="generation budget (default: %(default)s)")
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default: %(default)s)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default: %(default)s)")
    g.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens, 0 = off (default: %(default)s)")
    g.add_argument("--seed", type=int, help="seed for reproducible sampling")
    g.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="stop string (repeatable); it is not printed")


def request_params(args: argparse.Namespace, router_tau: float | None = None,
                   remote: bool = False) -> tuple[SamplingParams, RoutingParams]:
    """Validated configs from the arguments (ValueError names the field and the bad value), by the
    core's one routing rule (RoutingParams.resolve). rstitch+ takes tau from its router: `router_tau`
    here, or, `remote`, the server's (the tau here is then a stand-in that is never sent)."""
    sampling = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                              top_p=args.top_p, top_k=args.top_k, seed=args.seed, stop=tuple(args.stop))
    try:
        routing = RoutingParams.resolve(DEFAULT_THRESHOLD if remote else router_tau, policy=args.policy,
                                        threshold=args.threshold, draft_tokens=args.draft_tokens,
                                        acceptance=args.acceptance, relaxed_ratio=args.relaxed_ratio)
    except NoRouter:
        raise ValueError("--policy rstitch+ needs --router PATH") from None
    return sampling, routing


def add_draft_args(g) -> None:
    """--draft-tokens, --acceptance, --relaxed-ratio (speculative and verified)."""
    g.add_argument("--draft-tokens", type=int, default=None,
                   help="draft limit k for speculative / verified (default: 4 / 8)")
    g.add_argument("--acceptance", default="exact", choices=["exact", "relaxed"],
                   help="which drafts the LLM keeps: exact (the LLM's own output) or relaxed (default: %(default)s)")
    g.add_argument("--relaxed-ratio", type=float, default=RoutingParams.relaxed_ratio,
                   help="relaxed: keep a draft the LLM gives >= this x its top token's probability "
                        "(1 = exact, 0 = every draft; default: %(default)s)")


def parse_messages(value: str) -> list:
    if value.startswith("@"):
        try:
            with open(value[1:], encoding="utf-8") as f:
                value = f.read()
        except OSError as err:
            raise ValueError(f"--messages: cannot read {value[1:]!r}: {err.strerror}") from None
    try:
        return json.loads(value)
    except json.JSONDecodeError as err:
        raise ValueError(f"--messages is not valid JSON: {err}") from None


def run(args: argparse.Namespace) -> int:
    from rstitch_core.router import LearnedRouter

    router = LearnedRouter.load(args.router) if args.router else None  # bad files fail before the models load
    sampling, routing = request_params(args, router.config.tau if router else None)
    if router is not None and routing.policy is not Policy.RSTITCH_PLUS:
        raise ValueError("--router is only used by --policy rstitch+")
    messages = parse_messages(args.messages) if args.messages is not None else None
    engine = load_engine(args, quiet=args.json)
    if router is not None:
        router.bind(engine.slm)
    events = engine.generate(args.prompt, messages, sampling=sampling, routing=routing, router=router)
    if args.json:
        print(json.dumps(Generation.collect(events).to_dict(), ensure_ascii=False))
        return 0
    stream(events, colour=sys.stdout.isatty())
    return 0


def stream(events, colour: bool) -> None:
    """Print tokens as they come; end with a one-line summary on stderr."""
    out = sys.stdout
    if colour:
        print(f"{COLOURS['slm']}slm{RESET} {COLOURS['llm']}llm{RESET}", file=sys.stderr)
    for event in events:
        if isinstance(event, TokenEvent) and event.text:
            out.write(f"{COLOURS[event.source]}{event.text}{RESET}" if colour else event.text)
            out.flush()
        elif isinstance(event, SwitchEvent):
            continue
        elif isinstance(event, FinishEvent):
            out.write("\n")
            print(summary_line(event), file=sys.stderr)


def summary_line(event: FinishEvent) -> str:
    s = event.stats
    tps = s.generated_tokens / s.total_seconds if s.total_seconds else 0.0
    return (f"[{event.reason.value}] {s.generated_tokens} tokens (slm {s.slm.tokens}, llm {s.llm.tokens}, "
            f"llm share {s.llm_token_share:.1%}) | switches slm->llm {s.switches_slm_to_llm}, "
            f"llm->slm {s.switches_llm_to_slm} | prefill slm {s.slm.prefill_tokens}, llm {s.llm.prefill_tokens} "
            f"| ttft {s.time_to_first_token:.2f}s, total {s.total_seconds:.2f}s, {tps:.1f} tok/s")
