"""`rstitch` entry point: subcommands, and one clear line plus exit code 2 for any bad argument."""

from __future__ import annotations

import argparse
import sys

from rstitch_cli import bench, client, demo, eval, generate, profile, router, serve, train_pair


class Parser(argparse.ArgumentParser):
    """argparse prints the whole usage on errors; a user wants the one line that says what is wrong."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="rstitch", description="R-Stitch: entropy-guided SLM/LLM trajectory stitching")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    generate.add_parser(sub)
    bench.add_parser(sub)
    client.add_parser(sub)
    serve.add_parser(sub)
    demo.add_parser(sub)
    eval.add_parser(sub)
    router.add_parser(sub)
    train_pair.add_parser(sub)
    profile.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except ValueError as err:  # every user-caused error in the core is a ValueError
        print(f"rstitch {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
