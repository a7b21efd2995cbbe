"""Evaluate detections against complete labels, from files or in memory -> EvaluationResult."""

from __future__ import annotations

from pathlib import Path

from lesion_harvester.errors import DataError
from lesion_harvester.evaluation.matching import METRICS, VolumeTruth
from lesion_harvester.evaluation.metrics import EvaluationResult, evaluate_detections
from lesion_harvester.io.annotations import read_any_boxes, read_boxes_3d, read_slice_boxes
from lesion_harvester.structures import SliceBoxes, Tracklets


def load_truth(path: str | Path, metric: str) -> dict[str, VolumeTruth]:
    """2D boxes (complete-annotation format) for the P3D metrics, 3D boxes for ``iou3d``."""
    if metric == "iou3d":
        return {k: VolumeTruth.from_boxes_3d(v) for k, v in read_boxes_3d(path).items()}
    if metric not in METRICS:
        raise ValueError(f"unknown metric '{metric}'; expected one of {METRICS}")
    return {k: VolumeTruth.from_slice_boxes(v) for k, v in read_slice_boxes(path).items()}


def evaluate(truth: str | Path | SliceBoxes, detections: str | Path | Tracklets, metric: str = "p3d",
             iou_threshold: float | None = None, volumes: list[str] | None = None) -> EvaluationResult:
    """Score detections against complete labels: FROC per volume, AP, recall at precision.

    Args:
        truth: a ground-truth pickle (the authors' complete-annotation format; 3D boxes for
            ``iou3d``) or, in memory, {volume key: [SliceBox, ...]}.
        detections: a detection pickle (tracklets, 3D or 2D boxes) or {volume key: [Tracklet, ...]}.
        metric: ``p3d`` (the paper's), another of ``METRICS``, or ``iou3d``.
        volumes: restrict the ground truth (and so the FP/volume denominator) to these keys.
    """
    if isinstance(truth, (str, Path)):
        where = truth
        truth = load_truth(truth, metric)
    else:
        where = "the ground truth"
        truth = {k: VolumeTruth.from_slice_boxes(v) for k, v in truth.items()}
    if volumes is not None:
        missing = [k for k in volumes if k not in truth]
        if missing:
            raise DataError(where, f"{len(missing)} requested volumes have no ground truth, e.g. {missing[0]}")
        truth = {k: truth[k] for k in volumes}
    if isinstance(detections, (str, Path)):
        detections = read_any_boxes(detections)
    return evaluate_detections(truth, detections, metric, iou_threshold)


def evaluate_files(gt_path: str | Path, detections_path: str | Path, metric: str = "p3d",
                   iou_threshold: float | None = None, volumes: list[str] | None = None) -> EvaluationResult:
    """:func:`evaluate` on two files."""
    return evaluate(Path(gt_path), Path(detections_path), metric, iou_threshold, volumes)
