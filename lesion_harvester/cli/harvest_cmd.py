"""``lesion-harvester harvest DATA --out RUN``: the iterative lesion harvest, resumable."""

from __future__ import annotations

import dataclasses


def add_parser(sub) -> None:
    p = sub.add_parser("harvest", help="harvest missing lesions: LPG, LPC and mining in rounds (resumable)")
    p.add_argument("data", help="DeepLesion-layout folder (synthetic with splits.json, or real)")
    p.add_argument("--out", required=True, help="run folder: ledger, checkpoints, harvested.pkl, report")
    p.add_argument("--preset", default="demo")
    p.add_argument("--rounds", type=int, default=None, help="number of rounds (default: the preset's, 3)")
    p.add_argument("--fully-annotated", default=None, help="complete labels of V_M (e.g. Revised-Train744.pkl)")
    p.add_argument("--holdout", default=None,
                   help="complete labels of V_H^test for the report (e.g. Revised-Train100.pkl)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.set_defaults(handler=run)


def run(args) -> int:
    from lesion_harvester.cli.report_cmd import print_table
    from lesion_harvester.config import load_preset
    from lesion_harvester.errors import ConfigError
    from lesion_harvester.harvest.rounds import harvest
    from lesion_harvester.report.harvest_report import build_report

    preset = load_preset(args.preset)
    if args.rounds is not None:
        if args.rounds < 1:
            raise ConfigError(f"--rounds must be at least 1, got {args.rounds}")
        preset = dataclasses.replace(preset, harvest=dataclasses.replace(preset.harvest, rounds=args.rounds))
    harvest(args.data, args.out, preset, args.fully_annotated, args.holdout, args.device)
    report = build_report(args.out)
    print_table(report)
    print(f"\nharvested lesions: {args.out}/harvested.pkl; report: {args.out}/report.md")
    return 0
