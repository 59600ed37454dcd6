"""`rstitch demo`: the main job — one GSM8K problem through the served system, streamed end to end.

Starts a local service (Ray Serve: SLM worker, LLM worker, gRPC router) on the default pair (or
--slm/--llm), sends the problem over gRPC, streams the reasoning coloured by the model that wrote
each token, checks the answer against the gold one, and shuts the service down.
"""

from __future__ import annotations

import argparse
import socket
import sys

from rstitch_cli.common import DTYPE_CHOICES
from rstitch_core import RoutingParams, SamplingParams
from rstitch_core.models.loading import BACKEND_CHOICES


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="one GSM8K problem through the served system (the main job)",
                       description=__doc__.splitlines()[0])
    p.add_argument("--problem", type=int, default=0, help="GSM8K test problem id, 0-1318 (default: %(default)s)")
    p.add_argument("--policy", default=RoutingParams.policy.value,
                   help="verified | rstitch | llm | slm | speculative (default: %(default)s)")
    p.add_argument("--threshold", type=float, default=RoutingParams.threshold, help="tau (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=512, help="budget (default: %(default)s)")
    p.add_argument("--slm", metavar="SRC", help="small model (default: the embedded pair)")
    p.add_argument("--llm", metavar="SRC", help="large model")
    p.add_argument("--backend", default="auto", choices=BACKEND_CHOICES,
                   help="auto = llama.cpp on a CPU for GGUF files (the embedded pair), else torch (default: %(default)s)")
    p.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES,
                   help="torch backend: auto = the faster decoder of this machine's saved bfloat16/float32 profiles, else bfloat16 "
                        "(default: %(default)s)")
    p.add_argument("--prefill", default="auto", metavar="auto|off|DTYPE[:N]",
                   help="passes of >= N new tokens (the prompt) on a copy of each model in DTYPE; auto = where this "
                        "machine's saved bfloat16/float32 profiles find it faster (default: %(default)s)")
    p.set_defaults(run=run)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args: argparse.Namespace) -> int:
    from rstitch_cli.generate import stream
    from rstitch_cli.serve import ensure_models, local_service, resolve_cost_profile
    from rstitch_eval.answers import extract_answer, is_correct
    from rstitch_eval.gsm8k import load_gsm8k
    from rstitch_eval.prompts import gsm8k_messages
    from services.client import RStitchClient
    from services.protocol import ResultBuilder

    routing = RoutingParams(policy=args.policy, threshold=args.threshold)
    sampling = SamplingParams(max_new_tokens=args.max_new_tokens)
    if (args.slm is None) != (args.llm is None):
        raise ValueError("give both --slm and --llm, or neither for the embedded default pair")
    problems = load_gsm8k()
    if not 0 <= args.problem < len(problems):
        raise ValueError(f"--problem must be in [0, {len(problems) - 1}], got {args.problem}")
    problem = problems[args.problem]
    app_args = {"backend": args.backend, "dtype": args.dtype, "prefill": args.prefill, **({"slm": args.slm, "llm": args.llm} if args.slm else {})}
    ensure_models(app_args)
    if routing.cost_aware:  # only speculative/verified use it: the others need not wait for a profile
        resolve_cost_profile(app_args)
    print("rstitch demo: starting the service (Ray Serve, gRPC) ...", file=sys.stderr, flush=True)
    with local_service(app_args, _free_port(), _free_port(), None, http_port=_free_port(), quiet=True) as address:
        print(f"\nGSM8K problem {problem.id}: {problem.question}\n", flush=True)
        builder = ResultBuilder()
        with RStitchClient(address) as client:
            responses = client.generate(messages=gsm8k_messages(problem.question), sampling=sampling,
                                        routing=routing)
            stream(builder.events(responses), colour=sys.stdout.isatty())
    predicted = extract_answer(builder.text)
    verdict = "correct" if is_correct(predicted, problem.gold) else "wrong"
    print(f"answer: {predicted} | gold: {problem.gold} | {verdict} (policy {routing.policy.value}, "
          f"tau {routing.threshold}, served over gRPC at {address})", flush=True)
    return 0
