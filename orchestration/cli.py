"""`vllama`: one subcommand per stage. Each subcommand lives in `orchestration/commands/<name>.py`
and exposes `register(subparsers)`; a command is listed here only once it works."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from orchestration.config import ConfigError

COMMANDS = [
    "sample_data",
    "ingest",
    "convert",
    "submit",
    "features",
    "train",
    "generate",
    "chain",
    "demo",
    "plan",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vllama",
        description="Reproduce Video-LLaMA training on Ray: ingest media, extract frozen features, train, generate.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"orchestration.commands.{name}").register(sub)
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse, letting `key=value` overrides stand anywhere after the subcommand.

    argparse consumes a `nargs="*"` positional in one run, so `OUT --videos 3 seed=1` would leave
    `seed=1` unrecognised; such leftovers are appended to the command's overrides instead.
    """
    args, extra = parser.parse_known_args(argv)
    unknown = [x for x in extra if x.startswith("-") or "=" not in x]
    if unknown or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(unknown or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    return args


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except ConfigError as e:
        print(f"vllama {args.command}: config error:\n{e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
