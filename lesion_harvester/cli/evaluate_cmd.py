"""``lesion-harvester evaluate``: P3D / 3D IoU evaluation of detections, as the authors' script does."""

from __future__ import annotations

import json
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="AP, FROC per volume and recall at precision of 3D detections")
    p.add_argument("--gt", required=True, help="ground truth: 2D boxes pickle (p3d, p3d-box) or 3D boxes (iou3d)")
    p.add_argument("--detections", required=True, help="detections: tracklet pickle (3D or 2D boxes also accepted)")
    p.add_argument("--metric", choices=("p3d", "p3d-box", "iou3d"), default="p3d")
    p.add_argument("--iou", type=float, default=None, help="IoU threshold (default 0.5; 0.33 for iou3d)")
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
    from lesion_harvester.io.atomic import atomic_write_text

    result = evaluate_files(args.gt, args.detections, args.metric, args.iou)
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
