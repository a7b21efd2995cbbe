"""``lesion-harvester``: the command-line entry point.

Each subcommand module defines ``add_parser(subparsers)`` and ``run(args) -> int`` and calls the
documented Python API. User errors (:class:`~lesion_harvester.errors.LesionHarvesterError`) print
one line on stderr and exit with code 2; any other exception is a bug and keeps its traceback.

Under torchrun (``torchrun --nproc-per-node N $(which lesion-harvester) COMMAND ...``) the commands of
``DISTRIBUTED`` share their work among the processes (:mod:`lesion_harvester.distributed`); the
others refuse to run as several copies, which would write the same files. Ranks other than 0 log
only warnings on the terminal and show no progress bars.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from lesion_harvester import __version__
from lesion_harvester.cli.common import configure_logging
from lesion_harvester.errors import ConfigError, LesionHarvesterError

SUBCOMMANDS = (
    "inspect", "synth", "evaluate", "marks", "train-lpg", "propose", "train-lpc", "classify", "harvest", "report",
    "detect", "review", "export", "select", "info", "demo",
)
DISTRIBUTED = ("train-lpg", "propose", "detect", "harvest")  # the commands that run under torchrun


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lesion-harvester",
        description="Complete the missing lesion annotations of CT datasets (Lesion Harvester, Cai et al. 2020).",
        epilog="Run 'lesion-harvester COMMAND --help' for a command's options and examples.",
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        module = importlib.import_module(f"lesion_harvester.cli.{name.replace('-', '_')}_cmd")
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.command_line = ["lesion-harvester", *argv]  # for the log files of runs
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1  # by torchrun, as one of several processes
    if launched and int(os.environ.get("RANK", "0")) > 0:
        args.quiet, args.verbose = True, False
    configure_logging(args.verbose, args.quiet)
    try:
        if launched and args.command not in DISTRIBUTED:
            raise ConfigError(f"'{args.command}' runs as one process; under torchrun only "
                              f"{', '.join(DISTRIBUTED)} share their work (the others would write the same files)")
        return int(args.handler(args) or 0)
    except LesionHarvesterError as exc:
        one_line = str(exc).replace("\n", "\\n")
        print(f"lesion-harvester {args.command}: error: {one_line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lesion-harvester {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of the output went away (`... | head`): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so that exiting flushes nowhere
        return 141
    finally:
        if launched:
            from lesion_harvester.distributed import leave

            leave()


if __name__ == "__main__":
    sys.exit(main())
