"""Box geometry.

Convention: ``box_xyxy_px = (x1, y1, x2, y2)`` with inclusive pixel corners. The released
DeepLesion evaluation (and Pascal VOC) counts a box's width as ``x2 - x1 + 1``; those
functions carry ``voc`` in their names. The tracker uses continuous IoU (width ``x2 - x1``) as
SORT does.
"""

from __future__ import annotations

import math

import numpy as np


def iou_voc(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one box (4,) against boxes (N, 4), VOC "+1" convention. Returns (N,)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    box = np.asarray(box, dtype=np.float64)
    iw = np.maximum(np.minimum(boxes[:, 2], box[2]) - np.maximum(boxes[:, 0], box[0]) + 1.0, 0.0)
    ih = np.maximum(np.minimum(boxes[:, 3], box[3]) - np.maximum(boxes[:, 1], box[1]) + 1.0, 0.0)
    inter = iw * ih
    union = (
        (box[2] - box[0] + 1.0) * (box[3] - box[1] + 1.0)
        + (boxes[:, 2] - boxes[:, 0] + 1.0) * (boxes[:, 3] - boxes[:, 1] + 1.0)
        - inter
    )
    return inter / np.maximum(union, 1e-6)


def _continuous_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of broadcastable box arrays (..., 4); width = x2 - x1."""
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = iw * ih
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return inter / np.maximum(area_a + area_b - inter, 1e-9)


def pairwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Continuous IoU matrix (N, M) of boxes a (N, 4) and b (M, 4); width = x2 - x1."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    return _continuous_iou(a[:, None, :], b[None, :, :])


def aligned_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Continuous IoU (N,) of box a[i] with box b[i], both (N, 4)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    return _continuous_iou(a, np.asarray(b, dtype=np.float64).reshape(-1, 4))


def iou3d_voc(box_a: np.ndarray, box_b: np.ndarray) -> float:
    """3D IoU of ``(x1, y1, x2, y2, z0, z1)`` boxes.

    In-plane extents follow the VOC "+1" convention; the slice range ``z0..z1`` is read as the
    slices ``ceil(z0)..floor(z1)`` (so 5.5-6.5 is slice 6, as in the released 3D-Box.pkl), each
    slice one unit thick.
    """
    a, b = np.asarray(box_a, dtype=np.float64), np.asarray(box_b, dtype=np.float64)

    def z_span(box):
        return np.ceil(box[4] - 1e-9) - 0.5, np.floor(box[5] + 1e-9) + 0.5

    az0, az1 = z_span(a)
    bz0, bz1 = z_span(b)
    dx = max(min(a[2], b[2]) - max(a[0], b[0]) + 1.0, 0.0)
    dy = max(min(a[3], b[3]) - max(a[1], b[1]) + 1.0, 0.0)
    dz = max(min(az1, bz1) - max(az0, bz0), 0.0)
    inter = dx * dy * dz
    vol_a = (a[2] - a[0] + 1.0) * (a[3] - a[1] + 1.0) * max(az1 - az0, 0.0)
    vol_b = (b[2] - b[0] + 1.0) * (b[3] - b[1] + 1.0) * max(bz1 - bz0, 0.0)
    return float(inter / max(vol_a + vol_b - inter, 1e-6))


def boxes_inside_image(boxes: np.ndarray, height: int, width: int, margin_px: float = 0.0) -> np.ndarray:
    """(N,) bool: each box lies within the image, allowing ``margin_px`` outside."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return (
        (b[:, 0] >= -margin_px)
        & (b[:, 1] >= -margin_px)
        & (b[:, 2] <= width - 1 + margin_px)
        & (b[:, 3] <= height - 1 + margin_px)
        & (b[:, 2] >= b[:, 0])
        & (b[:, 3] >= b[:, 1])
    )


def z_reach_slices(box_xyxy_px, pixel_mm: float, slice_mm: float) -> int:
    """How many slices above and below its own a lesion boxed on one slice may reach: half its longer
    side, in slices (a roughly round lesion is about as deep as it is wide); 0 for an unknown
    (NaN) slice interval."""
    x1, y1, x2, y2 = box_xyxy_px
    if math.isnan(slice_mm) or slice_mm <= 0:
        return 0
    return int(math.ceil(0.5 * max(x2 - x1, y2 - y1) * pixel_mm / slice_mm))


def touches_box(z_indices: np.ndarray, boxes_xyxy_px: np.ndarray, box_xyxy_px, z_lo: float, z_hi: float) -> bool:
    """Whether any of the slice boxes (``boxes_xyxy_px`` (n, 4) on slices ``z_indices`` (n,)) lying in
    ``z_lo..z_hi`` overlaps ``box_xyxy_px`` at all (VOC "+1": boxes sharing a pixel touch)."""
    inside = (np.asarray(z_indices) >= z_lo) & (np.asarray(z_indices) <= z_hi)
    return bool(inside.any() and (iou_voc(np.asarray(box_xyxy_px), np.asarray(boxes_xyxy_px)[inside]) > 0).any())
