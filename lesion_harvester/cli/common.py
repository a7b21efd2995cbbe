"""What the subcommands share: how a subcommand is declared, the preset and device options, logging.

Every subcommand has a one-line summary (``lesion-harvester --help``), a description and examples
(``lesion-harvester COMMAND --help``), and the common flags ``-v/--verbose`` and ``-q/--quiet``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from tqdm import tqdm

from lesion_harvester.config import PRESETS, InvalidSetting, Preset, load_preset
from lesion_harvester.device import DEVICE_CHOICES_HELP
from lesion_harvester.errors import ConfigError
from lesion_harvester.io.logs import debug_of_this_package_only


def _common_flags() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", action="store_true", help="also log debug messages")
    group.add_argument("-q", "--quiet", action="store_true",
                       help="no progress bars and only warnings on the terminal (batch jobs); log files are kept")
    return parent


def add_subcommand(sub, name: str, summary: str, description: str, examples: list[str]) -> argparse.ArgumentParser:
    """A subcommand parser with its summary, description and examples, and the common flags."""
    epilog = "examples:\n" + "\n".join(f"  {line}" for line in examples)
    return sub.add_parser(name, help=summary, description=f"{summary[0].upper()}{summary[1:]}.\n\n{description}",
                          epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter,
                          parents=[_common_flags()], allow_abbrev=False)


def add_preset_options(p: argparse.ArgumentParser, default: str = "demo") -> None:
    """``--preset`` and ``--set``."""
    p.add_argument("--preset", default=default,
                   help=f"{', '.join(PRESETS)} or a YAML file (which may start from another with 'base: NAME'); "
                        f"default {default}")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="change one setting of the preset, e.g. --set lpg_train.iters_per_epoch=600 "
                        "(repeatable; the value is read as YAML)")


def preset_from_args(args: argparse.Namespace, builds_lpg: bool = False) -> Preset:
    """The preset of ``--preset`` and ``--set``. With ``builds_lpg`` (a command that trains an LPG),
    the whole LPG's size is checked too, before any data is read: it is counted on the model itself
    (:func:`lesion_harvester.lpg.model.check_size`), which reading a preset does not load."""
    preset = load_preset(args.preset, args.overrides)
    if builds_lpg:
        from lesion_harvester.lpg.model import check_size

        try:
            check_size(preset.lpg)
        except InvalidSetting as exc:  # named as loading names a setting: the file, or --set that changed it
            where = "--set" if any(o.strip().startswith("lpg.") for o in args.overrides) else args.preset
            raise ConfigError(f"{where}: {exc}") from None
    return preset


def add_device_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help=f"{DEVICE_CHOICES_HELP}; default auto")


def add_cache_option(p: argparse.ArgumentParser) -> None:
    """``--cache-dir``, by default ``$LESION_HARVESTER_CACHE_DIR`` or next to the data."""
    from lesion_harvester.paths import CACHE_ENV, CACHE_FOLDER

    p.add_argument("--cache-dir", default=os.environ.get(CACHE_ENV) or None,
                   help=f"keep prepared volumes here (one folder per dataset), e.g. when DATA is read-only; "
                        f"default ${CACHE_ENV}, else DATA/{CACHE_FOLDER} for a DeepLesion folder")


def device_and_ranks(args: argparse.Namespace):
    """(this process's device, its :class:`~lesion_harvester.distributed.Distributed`): alone, or one
    rank of a torchrun launch (then ``--device cuda`` means the local rank's GPU)."""
    from lesion_harvester.device import resolve_device
    from lesion_harvester.distributed import join

    device = resolve_device(args.device)
    dist = join(device)
    return dist.device(device), dist


class _TqdmHandler(logging.Handler):
    """Log records on stderr through ``tqdm.write``, so that they do not break a progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def _not_the_file_logs_stop_record(record: logging.LogRecord) -> bool:
    """False for the record a run's log file gets when the run stops on an error
    (:func:`lesion_harvester.io.logs.log_to_file`): on the terminal, main() prints that error itself,
    as one line, so the record would say it twice."""
    return not (record.name == "lesion_harvester.io.logs" and record.levelno >= logging.ERROR)


class _ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {text}"


def configure_logging(verbose: bool, quiet: bool) -> None:
    """Console logging for one command: INFO (and this package's DEBUG with -v, WARNING with -q) on
    stderr. The root logger passes INFO on in every case, so that a run's log file
    (:func:`lesion_harvester.io.logs.log_to_file`) holds the whole story even of a quiet run."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _TqdmHandler)]:
        root.removeHandler(handler)  # main() may run several times in one process (tests, notebooks)
    handler = _TqdmHandler()
    handler.setFormatter(_ConsoleFormatter("%(message)s"))
    handler.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    handler.addFilter(_not_the_file_logs_stop_record)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    debug_of_this_package_only(verbose)
