"""``lesion-harvester marks DATA --out FILE``: the original RECIST marks as detections (score 1)."""

from __future__ import annotations

from lesion_harvester.cli.common import add_subcommand


def add_parser(sub) -> None:
    p = add_subcommand(
        sub, "marks", "write a dataset's RECIST marks as single-slice tracklets with score 1",
        "The original marks in the detection format, so that 'evaluate' can say what they hold of the\n"
        "complete labels (Table I's row R).",
        ["lesion-harvester marks data/bench --split harvest_test --out marks.pkl"])
    p.add_argument("data", help="DeepLesion-layout folder")
    p.add_argument("--out", required=True, help="output tracklet pickle (a CSV is written next to it)")
    p.add_argument("--split", default=None, help="only these volumes (a splits.json name or train/val/test)")
    p.set_defaults(handler=run)


def run(args) -> int:
    from pathlib import Path

    from lesion_harvester.errors import DataError
    from lesion_harvester.io.annotations import write_tracklets, write_tracklets_csv
    from lesion_harvester.io.loader import open_volumes
    from lesion_harvester.structures import marks_to_tracklets

    source = open_volumes(args.data, split=args.split)
    if source.format != "deeplesion":
        raise DataError(args.data, "RECIST marks need the DeepLesion layout (Images_png/ and DL_info.csv)")
    tracklets = marks_to_tracklets(source.dataset.marks(source.keys))
    write_tracklets(args.out, tracklets)
    write_tracklets_csv(Path(args.out).with_suffix(".csv"), tracklets)
    print(f"wrote {sum(len(t) for t in tracklets.values())} marks of {len(tracklets)} volumes to {args.out}")
    return 0
