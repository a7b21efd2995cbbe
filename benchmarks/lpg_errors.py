"""Where an LPG errs, on a synthetic dataset (complete 3D labels): its false positives and its misses.

    python benchmarks/lpg_errors.py DATA DETS.pkl [--split detection_test] [--min-score 0.3]
        [--fp-per-volume 4] [--json OUT.json]

DATA must hold ``ground_truth/complete.pkl``, ``boxes_3d.pkl`` and ``lesions.csv`` (the synthetic
layout); DETS.pkl is a ``propose`` output. Three questions, answered separately:

- above ``--min-score``: how many false positives (P3D, as ``evaluate``) touch a lesion's 3D box
  on some slice (pieces or neighbours of lesions) and how many lie nowhere near one (mimics);
- at the score of ``--fp-per-volume``: the size (longest side less DeepLesion's 2 x 5 px padding,
  in mm) and z extent (mm) of the true and false positives, in bins;
- at that score: the share of lesions found, by long diameter, by kind and by contrast to their
  host tissue (found: a proposal at or above the score hits the lesion, P3D IoU >= 0.5), and the
  share that any proposal at all hits.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np

from lesion_harvester.errors import DataError
from lesion_harvester.evaluation.api import load_truth
from lesion_harvester.evaluation.matching import VolumeTruth, overlaps
from lesion_harvester.evaluation.metrics import evaluate_detections
from lesion_harvester.harvest.verify import touches
from lesion_harvester.io.annotations import read_any_boxes, read_boxes_3d
from lesion_harvester.io.splits import read_splits
from lesion_harvester.structures import SliceBox, group_by_volume

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py, also when loaded by path
import common

SIZE_BINS_MM = (0, 6, 9, 12, 16, 25, 50, np.inf)
LONG_BINS_MM = (0, 10, 15, 20, 30, 60, np.inf)
SENSITIVITY_BINS_MM = (0, 5, 10, 20, 50, np.inf)  # the size bins every LPG change is reported in
CONTRAST_BINS_HU = (0, 20, 40, 60, 100, 200, np.inf)
Z_BINS_MM = (0, 5, 10, 20, 40, 80, np.inf)
BOX_PADDING_PX = 10.0  # DeepLesion boxes: RECIST extent + 5 px on each side


def binned(values: np.ndarray, is_tp: np.ndarray, edges) -> list[dict]:
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (values >= lo) & (values < hi)
        out.append({"from": float(lo), "to": float(hi), "tp": int((m & is_tp).sum()), "fp": int((m & ~is_tp).sum())})
    return out


def lesions_found(data: Path, keys: list[str], detections: dict, score_at: float) -> list[dict]:
    """Per lesion of ``lesions.csv`` in ``keys``: its long diameter, kind and contrast, the best score
    of a proposal hitting it (P3D IoU >= 0.5; 0 if none) and whether that reaches ``score_at``."""
    wanted = set(keys)
    with open(data / "ground_truth" / "lesions.csv", newline="") as f:
        rows = [row for row in csv.DictReader(f) if row["volume_key"] in wanted]
    by_volume = group_by_volume((row["volume_key"], i) for i, row in enumerate(rows))
    best = np.zeros(len(rows))
    for key, indices in by_volume.items():
        truth = VolumeTruth.from_slice_boxes([
            SliceBox(int(rows[i]["key_z"]), tuple(float(rows[i][c]) for c in ("x1", "y1", "x2", "y2")))
            for i in indices])
        for t in detections.get(key, []):  # each tracklet against every lesion of its volume at once
            hit = overlaps(t, truth, "p3d") >= 0.5
            best[indices] = np.where(hit, np.maximum(best[indices], t.score), best[indices])
    return [{"long_mm": float(row["long_mm"]), "kind": row["kind"], "best_score": float(b),
             "contrast_hu": abs(float(row["value_hu"]) - float(row["host_hu"])), "found": bool(b >= score_at)}
            for row, b in zip(rows, best)]


def found_shares(lesions: list[dict], field: str, edges=None) -> list[dict]:
    """Share of lesions found at the operating point, and hit at any score, per bin (or per value)."""
    if edges is None:
        groups = [(value, [x for x in lesions if x[field] == value]) for value in sorted({x[field] for x in lesions})]
    else:
        groups = [(f"{lo:g}-{hi:g}", [x for x in lesions if lo <= x[field] < hi])
                  for lo, hi in zip(edges[:-1], edges[1:])]
    return [{"bin": name, "lesions": len(group), "found": float(np.mean([x["found"] for x in group])),
             "hit_at_any_score": float(np.mean([x["best_score"] > 0 for x in group]))}
            for name, group in groups if group]


@common.guarded
def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__)
    parser.add_argument("data")
    parser.add_argument("detections")
    parser.add_argument("--split", default="detection_test")
    parser.add_argument("--min-score", type=float, default=0.3)
    parser.add_argument("--fp-per-volume", type=float, default=4.0)
    args = parser.parse_args(argv)
    data = Path(args.data)
    splits = read_splits(data) or {}
    if args.split not in splits:
        raise DataError(data / "splits.json", f"no split '{args.split}'", "the synthetic layout is needed")
    keys = splits[args.split]
    volumes = {v["key"]: v for v in json.loads((data / "ground_truth" / "volumes.json").read_text())}
    truth = {k: v for k, v in load_truth(data / "ground_truth" / "complete.pkl", "p3d").items() if k in keys}
    boxes_3d = read_boxes_3d(data / "ground_truth" / "boxes_3d.pkl")
    detections = {k: v for k, v in read_any_boxes(args.detections).items() if k in truth}
    result = evaluate_detections(truth, detections)
    if len(result.scores) == 0:
        raise DataError(args.detections, f"no detections in the {len(truth)} volumes of split '{args.split}'")

    at = min(int(np.searchsorted(result.fp_per_volume, args.fp_per_volume)), len(result.scores) - 1)
    score_at = float(result.scores[at])
    near = mimics = 0
    size_mm, z_mm, is_tp = [], [], []
    for key, tracklets in detections.items():
        pixel_mm, interval_mm = volumes[key]["pixel_mm"], volumes[key]["interval_mm"]
        for i, t in enumerate(tracklets):
            tp = bool(result.detection_is_tp[key][i])
            if t.score >= args.min_score and not tp:
                if touches(t, boxes_3d.get(key, [])):
                    near += 1
                else:
                    mimics += 1
            if t.score >= score_at:
                box = t.boxes_xyxy_px[t.key_index]
                size_mm.append((max(box[2] - box[0], box[3] - box[1]) - BOX_PADDING_PX) * pixel_mm)
                z_mm.append((t.z_indices.max() - t.z_indices.min() + 1) * interval_mm)
                is_tp.append(tp)
    is_tp_arr = np.array(is_tp, dtype=bool)
    lesions = lesions_found(data, keys, detections, score_at)
    report = {
        "split": args.split,
        "volumes": len(truth),
        "ap": result.ap,
        "froc": result.froc,
        "above_min_score": {"min_score": args.min_score, "fp_touching_a_lesion": near, "fp_elsewhere": mimics},
        "at_fp_per_volume": {
            "fp_per_volume": args.fp_per_volume,
            "score": score_at,
            "size_mm": binned(np.array(size_mm), is_tp_arr, SIZE_BINS_MM),
            "z_extent_mm": binned(np.array(z_mm), is_tp_arr, Z_BINS_MM),
        },
        "lesions_found": {
            "lesions": len(lesions),
            "long_mm": found_shares(lesions, "long_mm", LONG_BINS_MM),
            "sensitivity_by_size_mm": found_shares(lesions, "long_mm", SENSITIVITY_BINS_MM),
            "kind": found_shares(lesions, "kind"),
            "contrast_hu": found_shares(lesions, "contrast_hu", CONTRAST_BINS_HU),
        },
    }
    small = sum(b["fp"] for b in report["at_fp_per_volume"]["size_mm"][:2])
    small_found = report["lesions_found"]["long_mm"][0]
    common.report(
        report, args.json,
        f"above score {args.min_score}: {mimics} of {near + mimics} false positives touch no lesion; "
        f"at {args.fp_per_volume:g} FP/volume (score {score_at:.3f}) {small} of {int((~is_tp_arr).sum())} "
        f"false positives are under {SIZE_BINS_MM[2]} mm",
        f"lesions found at that score: {np.mean([x['found'] for x in lesions]):.3f} of {len(lesions)}; "
        f"under {LONG_BINS_MM[1]} mm: {small_found['found']:.2f} of {small_found['lesions']}",
        "sensitivity by long side: " + ", ".join(f"{b['bin']} mm {b['found']:.2f} ({b['lesions']})"
                                                  for b in report["lesions_found"]["sensitivity_by_size_mm"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
