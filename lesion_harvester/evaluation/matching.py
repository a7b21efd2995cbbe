"""Overlap rules between a 3D detection (tracklet) and the ground truth of its volume.

Three rules, named apart:

- ``p3d``: the authors' released ``evaluation.py``: if the tracklet has a box on the ground-truth
  slice z, the VOC 2D IoU of those two boxes (the first such box if the tracklet repeats z),
  else 0.
- ``p3d-box``: the paper's wording (Sec. III-F): the tracklet's 3D box must span z
  (``z1 <= z <= z2``) and its x/y extent is compared with the 2D ground-truth box.
- ``iou3d``: 3D IoU of the tracklet's 3D box against ground-truth 3D boxes (threshold 0.33).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lesion_harvester.geometry.boxes import iou3d_voc, iou_voc
from lesion_harvester.structures import Box3D, SliceBox, Tracklet

METRICS = ("p3d", "p3d-box", "iou3d")
DEFAULT_THRESHOLDS = {"p3d": 0.5, "p3d-box": 0.5, "iou3d": 0.33}


@dataclass(frozen=True)
class VolumeTruth:
    """Ground truth of one volume as arrays: 2D marks (z (G,), boxes (G, 4)) or 3D boxes (G, 6)."""

    z_index: np.ndarray
    boxes: np.ndarray

    @classmethod
    def from_slice_boxes(cls, boxes: list[SliceBox]) -> VolumeTruth:
        if not boxes:
            return cls(np.zeros(0, dtype=np.int64), np.zeros((0, 4)))
        return cls(np.array([b.z_index for b in boxes]), np.array([b.box_xyxy_px for b in boxes], dtype=np.float64))

    @classmethod
    def from_boxes_3d(cls, boxes: list[Box3D]) -> VolumeTruth:
        rows = [list(b.box_xyxy_px) + list(b.z_range) for b in boxes]
        return cls(np.zeros(len(rows), dtype=np.int64), np.array(rows, dtype=np.float64).reshape(-1, 6))

    def __len__(self) -> int:
        return len(self.boxes)


def covers_a_lesion(tracklet: Tracklet, truth: VolumeTruth | None, metric: str = "p3d", iou: float = 0.5) -> bool:
    """Whether ``tracklet`` overlaps one of its volume's ground-truth lesions by ``iou`` or more."""
    return truth is not None and len(truth) > 0 and bool((overlaps(tracklet, truth, metric) >= iou).any())


def overlaps(tracklet: Tracklet, truth: VolumeTruth, metric: str) -> np.ndarray:
    """(G,) overlap of one tracklet with each ground-truth item of its volume under ``metric``."""
    g = len(truth)
    if g == 0:
        return np.zeros(0)
    if metric == "p3d":
        out = np.zeros(g)
        # first occurrence of each slice, as list.index does in the released code
        zs, first = np.unique(tracklet.z_indices, return_index=True)
        pos = np.searchsorted(zs, truth.z_index)
        pos = np.clip(pos, 0, len(zs) - 1)
        on_slice = zs[pos] == truth.z_index
        for j in np.flatnonzero(on_slice):
            out[j] = iou_voc(truth.boxes[j], tracklet.boxes_xyxy_px[first[pos[j]]])[0]
        return out
    if metric == "p3d-box":
        box3d = tracklet.box_3d()
        inside = (truth.z_index >= box3d.z_range[0]) & (truth.z_index <= box3d.z_range[1])
        out = np.zeros(g)
        if inside.any():
            out[inside] = iou_voc(np.array(box3d.box_xyxy_px), truth.boxes[inside])
        return out
    if metric == "iou3d":
        b = tracklet.box_3d()
        det = np.array(list(b.box_xyxy_px) + list(b.z_range))
        return np.array([iou3d_voc(det, gt) for gt in truth.boxes])
    raise ValueError(f"unknown metric '{metric}'; expected one of {METRICS}")
