"""``lesion-harvester harvest DATA --out RUN``: the iterative lesion harvest, resumable."""

from __future__ import annotations

import dataclasses
import logging
import shlex
import sqlite3
from pathlib import Path

from lesion_harvester.cli.common import (
    add_cache_option,
    add_device_option,
    add_preset_options,
    add_subcommand,
    device_and_ranks,
    preset_from_args,
)
from lesion_harvester.config import Preset
from lesion_harvester.errors import ConfigError, DataError
from lesion_harvester.paths import RunLayout


def add_parser(sub) -> None:
    p = add_subcommand(
        sub, "harvest", "harvest missing lesions: LPG, LPC and mining in rounds (resumable)",
        "Runs the paper's Fig. 2 loop: train (round 1) or fine-tune the LPG, scan every volume, verify the\n"
        "proposals against V_M and the marks, train the LPC, mine harvested lesions and hard negatives.\n"
        "RUN holds the ledger, one folder per round, harvested.pkl, hard_negatives.pkl,\n"
        "completed_annotations.pkl, harvested.csv, the report and harvest.log. Kill it at any moment and\n"
        "run the same command again: it continues after the last finished step. While it runs, RUN is\n"
        "locked (RUN/.lock): a second harvest of RUN refuses at once and names this one's pid and host.",
        ["lesion-harvester harvest data/bench --out runs/harvest --preset bench --rounds 3",
         "lesion-harvester harvest DeepLesion/ --out runs/dl --preset paper --device cuda "
         "--fully-annotated Revised-Train744.pkl --holdout Revised-Train100.pkl"])
    p.add_argument("data", help="DeepLesion-layout folder (synthetic with splits.json, or real)")
    p.add_argument("--out", required=True, help="run folder: ledger, checkpoints, harvested.pkl, report")
    add_preset_options(p)
    p.add_argument("--rounds", type=int, default=None, help="number of rounds (default: the preset's, 3)")
    p.add_argument("--fully-annotated", default=None, help="complete labels of V_M (e.g. Revised-Train744.pkl)")
    p.add_argument("--holdout", default=None,
                   help="complete labels of V_H^test for the report (e.g. Revised-Train100.pkl)")
    add_device_option(p)
    add_cache_option(p)
    p.set_defaults(handler=run)


def with_rounds(preset: Preset, rounds: int | None) -> Preset:
    """The preset with ``--rounds`` applied (at least 1)."""
    if rounds is None:
        return preset
    if rounds < 1:
        raise ConfigError(f"--rounds must be at least 1, got {rounds}")
    return dataclasses.replace(preset, harvest=dataclasses.replace(preset.harvest, rounds=rounds))


# what sqlite says when the disk, not the program, stops a write to the ledger
LEDGER_WRITE_FAILURES = ("disk is full", "readonly database", "disk i/o error", "unable to open database file")


def ledger_error(ledger: Path, exc: sqlite3.OperationalError) -> Exception:
    """A failed write to the ledger as a user error naming it (a full disk, a read-only file system),
    or ``exc`` itself (a bug, which keeps its traceback)."""
    if any(text in str(exc).lower() for text in LEDGER_WRITE_FAILURES):
        return DataError(ledger, f"cannot write: {exc}")
    return exc


def run(args) -> int:
    from lesion_harvester.cli.report_cmd import print_table
    from lesion_harvester.harvest.rounds import harvest
    from lesion_harvester.report.harvest_report import build_report

    preset = with_rounds(preset_from_args(args, builds_lpg=True), args.rounds)
    logging.getLogger(__name__).info("command: %s", shlex.join(args.command_line))
    device, dist = device_and_ranks(args)
    try:
        layout = harvest(args.data, args.out, preset, args.fully_annotated, args.holdout, device,
                         progress=not args.quiet, dist=dist, cache_dir=args.cache_dir)
    except sqlite3.OperationalError as exc:
        raise ledger_error(RunLayout(args.out).ledger, exc) from None
    if not dist.is_main:
        return 0
    report = build_report(layout.root)
    print_table(report)
    print(f"\nharvested lesions: {layout.harvested}; report: {layout.report_md}")
    return 0
