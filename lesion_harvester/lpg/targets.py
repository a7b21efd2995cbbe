"""CenterNet training targets: Gaussian heatmaps, sizes and offsets, plus the HNSL hard negatives.

Coordinates: a box ``(x1, y1, x2, y2)`` in inclusive input pixels spans the continuous extent
``[x1 - 0.5, x2 + 0.5]``; the output map (stride 4) is a resampling by 1/4, so an input point u
maps to ``(u + 0.5) / 4 - 0.5`` (the same rule as in-plane resampling).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from lesion_harvester.detectors.base import Crop


def to_output(u: np.ndarray | float, stride: int):
    return (np.asarray(u, dtype=np.float64) + 0.5) / stride - 0.5


def from_output(u: np.ndarray | float, stride: int):
    return (np.asarray(u, dtype=np.float64) + 0.5) * stride - 0.5


def gaussian_radius(height: float, width: float, min_overlap: float = 0.7) -> float:
    """CenterNet's radius rule: the smallest of three quadratic roots (sizes in output pixels)."""
    a1, b1 = 1.0, height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + math.sqrt(b1**2 - 4 * a1 * c1)) / 2
    a2, b2 = 4.0, 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    r2 = (b2 + math.sqrt(b2**2 - 4 * a2 * c2)) / 2
    a3, b3 = 4 * min_overlap, -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    r3 = (b3 + math.sqrt(b3**2 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


def draw_gaussian(heatmap: np.ndarray, centre_xy: tuple[int, int], radius: int) -> None:
    """Element-wise max of a Gaussian (diameter 2r+1, sigma = diameter / 6) into ``heatmap`` (H, W)."""
    diameter = 2 * radius + 1
    sigma = diameter / 6.0
    ys, xs = np.ogrid[-radius: radius + 1, -radius: radius + 1]
    g = np.exp(-(xs * xs + ys * ys) / (2 * sigma * sigma))
    g[g < np.finfo(g.dtype).eps * g.max()] = 0
    x, y = centre_xy
    h, w = heatmap.shape
    left, right = min(x, radius), min(w - x, radius + 1)
    top, bottom = min(y, radius), min(h - y, radius + 1)
    if left + right <= 0 or top + bottom <= 0:
        return
    region = heatmap[y - top: y + bottom, x - left: x + right]
    patch = g[radius - top: radius + bottom, radius - left: radius + right]
    np.maximum(region, patch, out=region)


def _gaussian_map(boxes_xyxy: np.ndarray, out_hw: tuple[int, int], stride: int):
    """Heatmap and, per box, (centre cell, size in output px, sub-cell offset) for boxes inside the map."""
    heatmap = np.zeros(out_hw, dtype=np.float32)
    objects = []
    for x1, y1, x2, y2 in np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4):
        w_out = (x2 - x1 + 1) / stride
        h_out = (y2 - y1 + 1) / stride
        cx, cy = to_output((x1 + x2) / 2, stride), to_output((y1 + y2) / 2, stride)
        ix, iy = int(math.floor(cx + 0.5)), int(math.floor(cy + 0.5))
        if not (0 <= ix < out_hw[1] and 0 <= iy < out_hw[0]) or w_out <= 0 or h_out <= 0:
            continue
        radius = max(0, int(gaussian_radius(math.ceil(h_out), math.ceil(w_out))))
        draw_gaussian(heatmap, (ix, iy), radius)
        objects.append((iy * out_hw[1] + ix, (w_out, h_out), (cx - ix, cy - iy)))
    return heatmap, objects


def build_targets(boxes_xyxy: np.ndarray, out_hw: tuple[int, int], stride: int = 4, max_objects: int = 32,
                  hard_negatives_xyxy: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Targets for one image.

    Args:
        boxes_xyxy: (N, 4) lesion boxes in input pixels.
        out_hw: output map size (input size / stride).
        hard_negatives_xyxy: (M, 4) hard-negative boxes: their Gaussians overwrite the positives
            with negative values (paper Eq. 3), so the heatmap target lies in [-1, 1]. A positive
            whose centre is overwritten is no object any more: its size and offset are not trained
            either (the heatmap's focal loss no longer counts it as one).

    Returns: ``hm`` (1, H, W) float32, ``ind`` (K,) int64 flat centre indices, ``wh`` and ``reg``
    (K, 2) float32 sizes (output px) and sub-cell offsets, ``mask`` (K,) float32 (K = max_objects).
    """
    positive, objects = _gaussian_map(boxes_xyxy, out_hw, stride)
    heatmap = positive
    if hard_negatives_xyxy is not None and len(hard_negatives_xyxy):
        negative, _ = _gaussian_map(hard_negatives_xyxy, out_hw, stride)
        heatmap = np.where(negative > 0, -negative, positive).astype(np.float32)
        objects = [obj for obj in objects if negative.flat[obj[0]] <= 0]
    ind = np.zeros(max_objects, dtype=np.int64)
    wh = np.zeros((max_objects, 2), dtype=np.float32)
    reg = np.zeros((max_objects, 2), dtype=np.float32)
    mask = np.zeros(max_objects, dtype=np.float32)
    for k, (flat, size, offset) in enumerate(objects[:max_objects]):
        ind[k], wh[k], reg[k], mask[k] = flat, size, offset, 1.0
    return {"hm": heatmap[None], "ind": ind, "wh": wh, "reg": reg, "mask": mask}


def batch_targets(crops: list[Crop], stride: int, max_objects: int) -> dict[str, torch.Tensor]:
    """:func:`build_targets` of each crop (its positives, and its hard negatives through the HNSL),
    stacked: ``hm`` (B, 1, H, W), ``ind`` (B, K), ``wh`` and ``reg`` (B, K, 2), ``mask`` (B, K) and
    ``complete`` (B,) (whether the crop's volume has every lesion labelled). Crops smaller than the
    largest (whole slices of other sizes) get zero targets in the padding, and their centre indices
    count in the padded width."""
    h = max(c.image.shape[1] for c in crops)
    w = max(c.image.shape[2] for c in crops)
    per_crop, heatmaps, inds = [], [], []
    for crop in crops:
        ih, iw = crop.image.shape[1:]
        t = build_targets(crop.positives, (ih // stride, iw // stride), stride, max_objects, crop.negatives)
        hm = t["hm"]
        pad = ((0, 0), (0, h // stride - hm.shape[1]), (0, w // stride - hm.shape[2]))
        heatmaps.append(np.pad(hm, pad))
        row, col = np.divmod(t["ind"], hm.shape[2])  # re-index centres for the padded width
        inds.append(row * (w // stride) + col)
        per_crop.append(t)
    targets = {k: torch.from_numpy(np.stack([t[k] for t in per_crop])) for k in ("wh", "reg", "mask")}
    targets["complete"] = torch.from_numpy(np.array([c.complete for c in crops], dtype=np.float32))
    targets["hm"] = torch.from_numpy(np.stack(heatmaps))
    targets["ind"] = torch.from_numpy(np.stack(inds))
    return targets
