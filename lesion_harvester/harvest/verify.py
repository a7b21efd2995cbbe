"""Verification (paper Sec. III-C): which 3D proposals cover known lesions, by P3D IoU.

In the fully annotated volumes V_M, proposals that overlap a complete label are P_M^R and the
others P_M^-; in the harvest volumes V_H, proposals that overlap a RECIST mark are P_H^R (the rest
is what the LPC sorts into harvested lesions and hard negatives).
"""

from __future__ import annotations

import numpy as np

from lesion_harvester.evaluation.matching import VolumeTruth, overlaps
from lesion_harvester.io.annotations import SliceBox, Tracklet


def match_known(tracklets: list[Tracklet], known: list[SliceBox], iou: float = 0.5,
                metric: str = "p3d") -> np.ndarray:
    """(N,) bool: each proposal overlaps at least one known 2D lesion box with IoU >= ``iou``."""
    if not tracklets:
        return np.zeros(0, dtype=bool)
    truth = VolumeTruth.from_slice_boxes(known)
    if len(truth) == 0:
        return np.zeros(len(tracklets), dtype=bool)
    return np.array([bool((overlaps(t, truth, metric) >= iou).any()) for t in tracklets])


def best_match(tracklets: list[Tracklet], box: SliceBox, metric: str = "p3d") -> tuple[int, float]:
    """Index and P3D IoU of the proposal that covers one known box best (-1 if none overlaps)."""
    truth = VolumeTruth.from_slice_boxes([box])
    best, best_iou = -1, 0.0
    for i, t in enumerate(tracklets):
        value = float(overlaps(t, truth, metric)[0])
        if value > best_iou:
            best, best_iou = i, value
    return best, best_iou
