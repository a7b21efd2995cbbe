"""``lesion-harvester evaluate``: P3D / 3D IoU evaluation of detections, as the authors' script does."""

from __future__ import annotations

import json
from pathlib import Path

from lesion_harvester.cli.common import add_subcommand


def add_parser(sub) -> None:
    p = add_subcommand(
        sub, "evaluate", "AP, FROC per volume and recall at precision of 3D detections",
        "The authors' pseudo-3D (P3D) rules by default: a tracklet hits a lesion if its box on the lesion's\n"
        "slice overlaps it with IoU >= 0.5; p3d-box is the paper's wording, iou3d a 3D IoU against 3D boxes.",
        ["lesion-harvester evaluate --gt data/bench/ground_truth/complete.pkl --detections dets.pkl "
         "--split detection_test --json r.json --plot plots/",
         "lesion-harvester evaluate --gt Revised-Test1071.pkl --detections dets.pkl"])
    p.add_argument("--gt", required=True, help="ground truth: 2D boxes pickle (p3d, p3d-box) or 3D boxes (iou3d)")
    p.add_argument("--detections", required=True, help="detections: tracklet pickle (3D or 2D boxes also accepted)")
    p.add_argument("--metric", choices=("p3d", "p3d-box", "iou3d"), default="p3d", help="overlap rule (default p3d)")
    p.add_argument("--iou", type=float, default=None, help="IoU threshold (default 0.5; 0.33 for iou3d)")
    p.add_argument("--split", default=None, help="evaluate only the volumes of this split of splits.json")
    p.add_argument("--splits", default=None, help="splits.json (default: the one beside GT's ground_truth/ folder)")
    p.add_argument("--json", dest="json_out", default=None, help="write the results as JSON here")
    p.add_argument("--plot", default=None, help="write FROC and precision-recall curves (PNG) into this folder")
    p.set_defaults(handler=run)


def format_table(result) -> str:
    rates = list(result.froc)
    lines = [
        f"metric {result.metric} (IoU >= {result.iou_threshold:g}): {result.n_volumes} volumes, {result.n_gt} lesions, "
        f"{result.n_detections} detections"
        + (f" ({result.n_ignored} in unknown volumes left out)" if result.n_ignored else ""),
        f"AP {result.ap:.4f}",
        "FP/volume   " + " ".join(f"{r:>7}" for r in rates),
        "sensitivity " + " ".join(f"{result.froc[r]:7.4f}" for r in rates),
        "precision   " + " ".join(f"{p:>7}" for p in result.recall_at_precision),
        "recall      " + " ".join(f"{v:7.4f}" for v in result.recall_at_precision.values()),
    ]
    return "\n".join(lines)


def run(args) -> int:
    from lesion_harvester.evaluation.api import evaluate_files
    from lesion_harvester.storage.atomic import atomic_write_text

    volumes = None
    if args.split:
        from lesion_harvester.errors import DataError
        from lesion_harvester.io.splits import read_splits

        splits_path = Path(args.splits) if args.splits else Path(args.gt).resolve().parent.parent / "splits.json"
        splits = read_splits(splits_path.parent) if splits_path.name == "splits.json" else None
        if splits is None or args.split not in splits:
            raise DataError(splits_path, f"no split '{args.split}' (give the dataset's splits.json with --splits)")
        volumes = splits[args.split]
    result = evaluate_files(args.gt, args.detections, args.metric, args.iou, volumes=volumes)
    print(format_table(result))
    if args.json_out:
        atomic_write_text(args.json_out, json.dumps(result.to_json(), indent=1))
    if args.plot:
        from lesion_harvester.report.plots import plot_froc, plot_pr

        out = Path(args.plot)
        out.mkdir(parents=True, exist_ok=True)
        plot_froc({Path(args.detections).stem: result}, out / "froc.png")
        plot_pr({Path(args.detections).stem: result}, out / "pr.png")
    return 0
