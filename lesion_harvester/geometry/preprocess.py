"""Input preprocessing as MULAN / 3DCE do it (../shared/notes/reference-facts.md section 2).

- intensity: HU window [-1024, 3071] mapped to [0, 255], clipped, minus a pixel mean of 50; prepared
  volumes are stored in this encoding, and a preset may feed the network another window
  (:func:`rewindow`), e.g. a soft-tissue window for a detector trained from scratch;
- body crop: pixels above -768 HU (raw PNG 32000), a 7x7 binary opening, the mask's bounding box;
- in-plane resampling to a target pixel spacing with linear interpolation, the longest side capped;
- 2.5D context: 9 slices at a fixed mm interval around the target, each interpolated linearly
  between its two nearest real slices with its own weights; volume edges reuse the nearest slice;
  an unknown (NaN) slice interval repeats the target slice.

Coordinates: a resampled pixel centre u' relates to the original u by u' = (u + 0.5) * scale - 0.5
(``align_corners=False``), for boxes as for points.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

WINDOW_HU = (-1024.0, 3071.0)
AIR_HU = -1000.0  # what a missing slice (NaN) is read as
PIXEL_MEAN = 50.0
BODY_THRESHOLD_HU = 32000 - 32768  # MULAN thresholds the raw PNG at 32000


def normalize_hu(hu: np.ndarray | torch.Tensor, window_hu=WINDOW_HU, pixel_mean: float = PIXEL_MEAN):
    """HU -> network input: window to [0, 255], clip, subtract the pixel mean (no std division)."""
    lo, hi = window_hu
    if isinstance(hu, torch.Tensor):
        return ((hu.float() - lo) * (255.0 / (hi - lo))).clamp_(0.0, 255.0) - pixel_mean
    scaled = (np.asarray(hu, dtype=np.float32) - lo) * np.float32(255.0 / (hi - lo))
    return np.clip(scaled, 0.0, 255.0) - np.float32(pixel_mean)


def stored_to_hu(values: np.ndarray | torch.Tensor):
    """Inverse of :func:`normalize_hu` with MULAN's window (exact inside [-1024, 3071] HU)."""
    return (values + PIXEL_MEAN) * ((WINDOW_HU[1] - WINDOW_HU[0]) / 255.0) + WINDOW_HU[0]


def rewindow(stored: torch.Tensor, window_hu: tuple[float, float], pixel_mean: float) -> torch.Tensor:
    """Values in the stored (MULAN) encoding -> network input with ``window_hu`` and ``pixel_mean``.

    Returns ``stored`` itself when the two encodings agree."""
    if tuple(window_hu) == WINDOW_HU and pixel_mean == PIXEL_MEAN:
        return stored
    return normalize_hu(stored_to_hu(stored), window_hu, pixel_mean)


def body_crop_box(
    hu_zyx: np.ndarray, threshold_hu: float = BODY_THRESHOLD_HU, opening_px: int = 7
) -> tuple[int, int, int, int]:
    """Bounding box ``(y0, y1, x0, x1)`` (exclusive ends) of the body in a (Z, Y, X) or (Y, X) array.

    One crop serves the whole volume (so that slices stay aligned for 3D context): the body mask
    is the union over slices of ``hu > threshold``, opened with a square structuring element.
    Falls back to the whole image if nothing survives.
    """
    hu = np.asarray(hu_zyx)
    mask = hu > threshold_hu
    if mask.ndim == 3:
        mask = mask.any(axis=0)
    if opening_px > 1:
        mask = ndimage.binary_opening(mask, structure=np.ones((opening_px, opening_px), dtype=bool))
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if len(rows) == 0:
        return 0, mask.shape[0], 0, mask.shape[1]
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def inplane_scale(
    spacing_yx_mm: tuple[float, float], target_mm: float, size_yx: tuple[int, int], max_size_px: int
) -> float:
    """Scale factor to resample to ``target_mm`` pixels, capped so the longest side is <= max_size_px.

    Uses the mean of the row and column spacings (they are equal in practice).
    """
    spacing = 0.5 * (spacing_yx_mm[0] + spacing_yx_mm[1])
    scale = spacing / target_mm
    longest = max(size_yx) * scale
    if max_size_px and longest > max_size_px:
        scale *= max_size_px / longest
    return float(scale)


def resample_inplane(slices: np.ndarray | torch.Tensor, scale: float) -> torch.Tensor:
    """Bilinearly resample (Z, Y, X) slices by ``scale``; output size = floor(size * scale).

    Passing the scale itself (not a target size) keeps the mapping exactly u' = (u + 0.5) * scale - 0.5.
    """
    t = torch.as_tensor(slices, dtype=torch.float32)
    if abs(scale - 1.0) < 1e-6:
        return t.clone()
    return F.interpolate(
        t[None], scale_factor=scale, mode="bilinear", align_corners=False, recompute_scale_factor=False
    )[0]


def boxes_to_resampled(boxes_xyxy: np.ndarray, crop_yx: tuple[int, int], scale: float) -> np.ndarray:
    """Original-slice boxes (N, 4) -> boxes in the cropped and resampled image."""
    b = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4).copy()
    b[:, [0, 2]] -= crop_yx[1]
    b[:, [1, 3]] -= crop_yx[0]
    return (b + 0.5) * scale - 0.5


def boxes_to_original(boxes_xyxy: np.ndarray, crop_yx: tuple[int, int], scale: float) -> np.ndarray:
    """Inverse of :func:`boxes_to_resampled`."""
    b = (np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4) + 0.5) / scale - 0.5
    b[:, [0, 2]] += crop_yx[1]
    b[:, [1, 3]] += crop_yx[0]
    return b


def context_offsets(
    slice_interval_mm: float, num_slices: int = 9, context_mm: float = 2.0, mode: str = "exact"
) -> np.ndarray:
    """Offsets (in native slices, floats) of the ``num_slices`` context slices around a target.

    ``mode="exact"`` places them every ``context_mm`` exactly, as MULAN does. ``mode="shared"``
    rounds the distance between consecutive triplet centres (3 context steps) to a whole number
    of native slices, so that a triplet computed for one target is exactly the side triplet of
    the targets 3 steps away; the context interval then differs from ``context_mm`` by at most a
    sixth of the slice interval. NaN interval: all offsets 0 (the target slice repeated).
    """
    if num_slices % 2 != 1:
        raise ValueError(f"num_slices must be odd, got {num_slices}")
    if not math.isfinite(slice_interval_mm) or slice_interval_mm <= 0:
        return np.zeros(num_slices)
    step = context_mm / slice_interval_mm
    if mode == "shared":
        step = max(1, round(3 * step)) / 3.0
    elif mode != "exact":
        raise ValueError(f"unknown context mode '{mode}'; expected exact or shared")
    return (np.arange(num_slices) - num_slices // 2) * step


@dataclass(frozen=True)
class SliceBlend:
    """Linear interpolation of fractional slice positions: ``(1 - w) * v[lo] + w * v[hi]``."""

    lo: np.ndarray  # (K,) int
    hi: np.ndarray  # (K,) int
    w_hi: np.ndarray  # (K,) float32


def blend_positions(positions: np.ndarray, num_slices: int) -> SliceBlend:
    """Per-position weights between the two nearest real slices; positions outside the volume clamp."""
    pos = np.clip(np.asarray(positions, dtype=np.float64), 0, num_slices - 1)
    lo = np.floor(pos + 1e-9).astype(np.int64)
    lo = np.minimum(lo, num_slices - 1)
    hi = np.minimum(lo + 1, num_slices - 1)
    w = (pos - lo).astype(np.float32)
    w[np.abs(w) < 1e-6] = 0.0
    return SliceBlend(lo, hi, w)


def gather_slices(volume_zyx: torch.Tensor, positions: np.ndarray) -> torch.Tensor:
    """Interpolated slices at fractional ``positions`` (K,) from a (Z, H, W) tensor -> (K, H, W)."""
    blend = blend_positions(positions, volume_zyx.shape[0])
    lo = volume_zyx[torch.as_tensor(blend.lo)]
    hi = volume_zyx[torch.as_tensor(blend.hi)]
    w = torch.as_tensor(blend.w_hi, dtype=volume_zyx.dtype, device=volume_zyx.device)
    w = w.view(-1, *([1] * (volume_zyx.dim() - 1)))
    return lo + (hi - lo) * w


def pad_to_multiple(image: torch.Tensor, multiple: int = 16) -> torch.Tensor:
    """Zero-pad the last two dims at the bottom/right to a multiple of ``multiple``."""
    h, w = image.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return image
    return F.pad(image, (0, pw, 0, ph))
