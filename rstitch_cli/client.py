"""`rstitch client`: one request to a running rstitch server over gRPC, printed like `rstitch generate`."""

from __future__ import annotations

import argparse
import json
import sys

from rstitch_cli.generate import add_prompt_args, add_request_args, parse_messages, request_params, stream


def add_parser(sub) -> None:
    p = sub.add_parser("client", help="send one request to an rstitch gRPC server",
                       description="Send one generation request to a running rstitch server and print "
                       "the result exactly like `rstitch generate` (streamed text coloured by model on a "
                       "terminal with a summary line on stderr, or one JSON object with --json).")
    p.add_argument("--address", default="localhost:9000", metavar="HOST:PORT",
                   help="the server's gRPC address (default: %(default)s)")
    add_prompt_args(p)
    add_request_args(p)
    p.add_argument("--request-id", default="", help="echoed in every response (default: the server makes one)")
    p.add_argument("--timeout", type=float, metavar="SECONDS", help="deadline for the whole generation (default: none)")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object instead of streaming")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import grpc  # here, not at module level: `rstitch generate` should not pay for it

    from services.client import RStitchClient
    from services.protocol import ResultBuilder

    sampling, routing = request_params(args, remote=True)  # bad values fail locally, before any connection
    messages = parse_messages(args.messages) if args.messages is not None else None
    if args.timeout is not None and not args.timeout > 0:
        raise ValueError(f"--timeout must be a number of seconds > 0, got {args.timeout}")
    builder = ResultBuilder()
    with RStitchClient(args.address, timeout=args.timeout) as client:
        responses = client.generate(args.prompt, messages, sampling=sampling, routing=routing,
                                    request_id=args.request_id)
        try:
            if args.json:
                for _ in builder.events(responses):
                    pass
            else:
                stream(builder.events(responses), colour=sys.stdout.isatty())
        except grpc.RpcError as err:
            if builder.text and not args.json:
                print()  # end the partly streamed line before the error
            return report_rpc_error(err, args.address)
        except ValueError as err:  # the request was sent, so this is the server's fault, not the user's
            print(f"rstitch client: error: bad response from the server: {err}", file=sys.stderr)
            return 1
    if builder.finish is None:
        print("rstitch client: error: the server closed the stream without a finish message", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(builder.generation().to_dict(), ensure_ascii=False))
    return 0


def report_rpc_error(err, address: str) -> int:
    """One line `rstitch client: error: CODE: details`; exit 2 for a bad request, 1 otherwise."""
    import grpc

    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = " ".join(str(err.details() if hasattr(err, "details") else err).split())
    if code is grpc.StatusCode.UNAVAILABLE:
        details = f"cannot reach the server at {address} ({details})"
    print(f"rstitch client: error: {code.name}: {details}", file=sys.stderr)
    return 2 if code is grpc.StatusCode.INVALID_ARGUMENT else 1
