"""Evaluate detections against complete labels, from files or in memory -> EvaluationResult."""

from __future__ import annotations

from pathlib import Path

from lesion_harvester.errors import DataError
from lesion_harvester.evaluation.matching import METRICS, VolumeTruth
from lesion_harvester.evaluation.metrics import EvaluationResult, evaluate_detections
from lesion_harvester.io.annotations import outside_volume, read_any_boxes, read_boxes_3d, read_slice_boxes
from lesion_harvester.io.deeplesion import VolumeSize, sub_volume_sizes
from lesion_harvester.structures import Box3D, SliceBoxes, Tracklet, Tracklets


def load_truth(path: str | Path, metric: str) -> dict[str, VolumeTruth]:
    """2D boxes (complete-annotation format) for the P3D metrics, 3D boxes for ``iou3d``."""
    if metric == "iou3d":
        return {k: VolumeTruth.from_boxes_3d(v) for k, v in read_boxes_3d(path).items()}
    if metric not in METRICS:
        raise ValueError(f"unknown metric '{metric}'; expected one of {METRICS}")
    return {k: VolumeTruth.from_slice_boxes(v) for k, v in read_slice_boxes(path).items()}


def evaluate(truth: str | Path | SliceBoxes, detections: str | Path | Tracklets, metric: str = "p3d",
             iou_threshold: float | None = None, volumes: list[str] | None = None,
             volume_sizes: dict[str, VolumeSize] | None = None) -> EvaluationResult:
    """Score detections against complete labels: FROC per volume, AP, recall at precision.

    Args:
        truth: a ground-truth pickle (the authors' complete-annotation format; 3D boxes for
            ``iou3d``) or, in memory, {volume key: [SliceBox, ...]}.
        detections: a detection pickle (tracklets, 3D or 2D boxes) or {volume key: [Tracklet, ...]}.
        metric: ``p3d`` (the paper's), another of ``METRICS``, or ``iou3d``.
        volumes: restrict the ground truth (and so the FP/volume denominator) to these keys.
        volume_sizes: {volume key: (slices, (width, height))}; by default, for a ground-truth file, those
            of the dataset's DL_info.csv (:func:`dl_info_of`) when there is one. A detection or a lesion
            on a slice the volume lacks, or with a box that does not overlap its slice, is then a
            DataError: such a file is in another frame (1-based or PNG slice numbers, other volumes,
            rescaled images), and counting its boxes as plain misses would pass a wrong score off as one.
    """
    sizes_from = "the volume sizes given"
    if isinstance(truth, (str, Path)):
        where = truth
        if volume_sizes is None and (dl_info := dl_info_of(truth)) is not None:
            volume_sizes, sizes_from = sub_volume_sizes(dl_info), str(dl_info)
        truth = load_truth(truth, metric)
    else:
        where = "the ground truth"
        truth = {k: VolumeTruth.from_slice_boxes(v) for k, v in truth.items()}
    if volumes is not None:
        missing = [k for k in volumes if k not in truth]
        if missing:
            raise DataError(where, f"{len(missing)} requested volumes have no ground truth, e.g. {missing[0]}")
        truth = {k: truth[k] for k in volumes}
    detections_where = detections if isinstance(detections, (str, Path)) else "the detections"
    if isinstance(detections, (str, Path)):
        detections = read_any_boxes(detections)
    if volume_sizes:
        # the evaluated volumes only: detections elsewhere are left out (and counted as such)
        _check_inside({k: v for k, v in detections.items() if k in truth}, volume_sizes, detections_where,
                      sizes_from, "detection")
        _check_inside({k: _truth_tracklets(t, metric) for k, t in truth.items()}, volume_sizes, where, sizes_from,
                      "lesion")
    return evaluate_detections(truth, detections, metric, iou_threshold)


def dl_info_of(gt_path: str | Path) -> Path | None:
    """The DL_info.csv of a ground-truth file's dataset: ``DATA/DL_info.csv`` for ``DATA/ground_truth/X.pkl``
    (the synthetic layout) or beside the file; None when there is none (the sizes are then unknown)."""
    gt_path = Path(gt_path).resolve()
    for folder in (gt_path.parent, gt_path.parent.parent if gt_path.parent.name == "ground_truth" else None):
        if folder is not None and (folder / "DL_info.csv").is_file():
            return folder / "DL_info.csv"
    return None


def _truth_tracklets(truth: VolumeTruth, metric: str) -> list[Tracklet]:
    """A volume's ground truth as tracklets, to check where it lies."""
    if metric == "iou3d":
        boxes = [Box3D(tuple(row[:4]), (row[4], row[5])) for row in truth.boxes]
        return [t for t in map(Tracklet.from_box_3d, boxes) if t is not None]
    return [Tracklet.single_slice(z, box, 1.0) for z, box in zip(truth.z_index, truth.boxes)]


def _check_inside(items: Tracklets, sizes: dict[str, VolumeSize], where: str | Path, sizes_from: str,
                  what: str) -> None:
    """DataError naming ``where`` and the volume at the first item outside its volume (of known size)."""
    for key, tracklets in items.items():
        if key not in sizes:
            continue
        num_slices, size_px = sizes[key]
        for i, t in enumerate(tracklets):
            problem = outside_volume(t, num_slices, size_px, margin_px=None)
            if problem is not None:
                raise DataError(where, f"{key}: {what} {i}: {problem} (sizes from {sizes_from}); is the file in "
                                       "0-based slice offsets and pixels of these volumes?")


def evaluate_files(gt_path: str | Path, detections_path: str | Path, metric: str = "p3d",
                   iou_threshold: float | None = None, volumes: list[str] | None = None) -> EvaluationResult:
    """:func:`evaluate` on two files."""
    return evaluate(Path(gt_path), Path(detections_path), metric, iou_threshold, volumes)
