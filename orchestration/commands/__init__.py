"""One module per `vllama` subcommand, each with `register(subparsers)`."""

from __future__ import annotations

import argparse


def add_config_args(parser: argparse.ArgumentParser, kind: str, example: str) -> None:
    """`--config PATH` plus trailing `key=value` overrides, the same for every stage."""
    parser.add_argument(
        "--config",
        metavar="PATH",
        help=f"YAML file with the stage's settings (see configs/{kind}/, e.g. {example}); "
        "without it the defaults apply",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="override any config key, dotted for nested keys (values parsed as YAML), e.g. storage.region=eu-west-1",
    )
