"""``lesion-harvester synth OUT``: write a synthetic CT dataset in the DeepLesion layout."""

from __future__ import annotations

import dataclasses
import json

from lesion_harvester.cli.common import add_preset_options, add_subcommand, preset_from_args

SUMMARY_KEYS = ("volumes", "lesions", "lesions_per_volume", "marked_fraction", "long_diameter_mm", "slices_per_volume")


def add_parser(sub) -> None:
    p = add_subcommand(
        sub, "synth", "generate a synthetic CT benchmark with complete ground truth",
        "Writes Images_png/ and DL_info.csv (only the RECIST-marked lesions, as in DeepLesion), the complete\n"
        "ground truth (ground_truth/complete.pkl, boxes_3d.pkl, lesions.csv), splits.json, stats.json and\n"
        "montage.png. The same preset and seed give the same dataset. OUT is built in a hidden folder\n"
        "beside it (.OUT.XXXX.partial) and renamed when complete; one left by a killed run is removed by\n"
        "the next run into the same OUT.",
        ["lesion-harvester synth data/bench --preset bench --seed 0",
         "lesion-harvester synth data/small --preset demo --volumes 20 --seed 3"])
    p.add_argument("out", help="output folder (must not exist or be empty)")
    add_preset_options(p)
    p.add_argument("--volumes", type=int, default=None, help="total volumes (default: the preset's)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the dataset (default 0)")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: the preset's)")
    p.set_defaults(handler=run)


def run(args) -> int:
    from lesion_harvester.synth.dataset import write_synthetic_dataset

    cfg = preset_from_args(args).synth
    if args.volumes is not None:
        cfg = cfg.with_total(args.volumes)
    if args.workers is not None:
        cfg = dataclasses.replace(cfg, workers=max(1, args.workers))
    stats = write_synthetic_dataset(args.out, cfg, seed=args.seed, progress=not args.quiet)
    print(json.dumps({k: stats[k] for k in SUMMARY_KEYS}, indent=1))
    print(f"wrote {args.out} (montage: {args.out}/montage.png)")
    return 0
