"""``lesion-harvester``: the command-line entry point.

Each subcommand module defines ``add_parser(subparsers)`` and ``run(args) -> int``. User errors
(:class:`~lesion_harvester.errors.LesionHarvesterError`) print one line on stderr and exit with
code 2; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from lesion_harvester import __version__
from lesion_harvester.errors import LesionHarvesterError

SUBCOMMANDS = (
    "inspect", "synth", "evaluate", "marks", "train-lpg", "propose", "train-lpc", "classify", "harvest", "report",
    "demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lesion-harvester",
        description="Complete the missing lesion annotations of CT datasets (Lesion Harvester, Cai et al. 2020).",
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        module = importlib.import_module(f"lesion_harvester.cli.{name.replace('-', '_')}_cmd")
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.handler(args) or 0)
    except LesionHarvesterError as exc:
        print(f"lesion-harvester {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lesion-harvester {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
