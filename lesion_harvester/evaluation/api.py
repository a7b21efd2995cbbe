"""Evaluate files: ground-truth pickle + detection pickle -> EvaluationResult."""

from __future__ import annotations

from pathlib import Path

from lesion_harvester.errors import DataError
from lesion_harvester.evaluation.matching import METRICS, VolumeTruth
from lesion_harvester.evaluation.metrics import EvaluationResult, evaluate_detections
from lesion_harvester.io.annotations import read_any_boxes, read_boxes_3d, read_slice_boxes


def load_truth(path: str | Path, metric: str) -> dict[str, VolumeTruth]:
    """2D boxes (complete-annotation format) for the P3D metrics, 3D boxes for ``iou3d``."""
    if metric == "iou3d":
        return {k: VolumeTruth.from_boxes_3d(v) for k, v in read_boxes_3d(path).items()}
    if metric not in METRICS:
        raise ValueError(f"unknown metric '{metric}'; expected one of {METRICS}")
    return {k: VolumeTruth.from_slice_boxes(v) for k, v in read_slice_boxes(path).items()}


def evaluate_files(gt_path: str | Path, detections_path: str | Path, metric: str = "p3d",
                   iou_threshold: float | None = None, volumes: list[str] | None = None) -> EvaluationResult:
    """Evaluate; ``volumes`` restricts the ground truth (and so the FP/volume denominator) to those keys."""
    truth = load_truth(gt_path, metric)
    if volumes is not None:
        missing = [k for k in volumes if k not in truth]
        if missing:
            raise DataError(gt_path, f"{len(missing)} requested volumes have no ground truth, e.g. {missing[0]}")
        truth = {k: truth[k] for k in volumes}
    detections = read_any_boxes(detections_path)
    return evaluate_detections(truth, detections, metric, iou_threshold)
