"""Preprocessing: a :class:`~lesion_harvester.structures.Volume` becomes a :class:`PreparedVolume`.

Preparing a volume once (MULAN's body crop, in-plane resampling and HU windowing) and keeping it
as float16 makes every later 9-slice context a cheap slice-and-interpolate, for LPG training
crops, whole-volume scans and LPC patches alike. Prepared volumes are cached on disk by
:class:`lesion_harvester.dataset.prepared_cache.PreparedCache`.

Frames: ``PreparedVolume.image`` is indexed (z, y', x') in pixels of the body-cropped, resampled
slice; :meth:`PreparedVolume.to_prepared` and :meth:`PreparedVolume.to_original` convert
``box_xyxy_px`` between that frame and pixels of the original slice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lesion_harvester.config import PreprocessConfig
from lesion_harvester.geometry.preprocess import (
    AIR_HU,
    blend_positions,
    body_crop_box,
    boxes_to_original,
    boxes_to_resampled,
    context_offsets,
    inplane_scale,
    normalize_hu,
    resample_inplane,
)
from lesion_harvester.structures import Volume

AIR_VALUE = float(normalize_hu(np.array([-1024.0]))[0])  # what lies outside the body crop (stored encoding)


def network_air(pre: PreprocessConfig) -> float:
    """Air (-1024 HU) in the network's input encoding: what pads images beyond the body crop."""
    return float(normalize_hu(np.array([-1024.0]), pre.window_hu, pre.pixel_mean)[0])


@dataclass
class PreparedVolume:
    """A volume ready for the network.

    image: (Z, H, W) float16, body-cropped, resampled to ``spacing_mm`` and normalized with MULAN's
    window (the stored encoding; the network's own window is applied when inputs are built).
    crop_yx: top-left corner of the body crop in original pixels; scale: resampling factor.
    """

    key: str
    image: np.ndarray
    crop_yx: tuple[int, int]
    scale: float
    spacing_zyx_mm: tuple[float, float, float]
    original_shape: tuple[int, int, int]

    @property
    def num_slices(self) -> int:
        return int(self.image.shape[0])

    def to_prepared(self, boxes_xyxy: np.ndarray) -> np.ndarray:
        """(N, 4) boxes in original pixels -> pixels of the prepared image."""
        return boxes_to_resampled(boxes_xyxy, self.crop_yx, self.scale)

    def to_original(self, boxes_xyxy: np.ndarray) -> np.ndarray:
        """(N, 4) boxes in pixels of the prepared image -> original pixels."""
        return boxes_to_original(boxes_xyxy, self.crop_yx, self.scale)

    def context_positions(self, num_slices: int, cfg: PreprocessConfig) -> np.ndarray:
        """(Z, S) fractional slice positions of every target's context, clamped into the volume."""
        offsets = context_offsets(self.spacing_zyx_mm[0], num_slices, cfg.context_mm, cfg.context_mode)
        positions = np.arange(self.num_slices)[:, None] + offsets[None, :]
        return np.clip(positions, 0, self.num_slices - 1)

    def window(self, positions: np.ndarray, y0: int, x0: int, size_y: int, size_x: int) -> np.ndarray:
        """(K, size_y, size_x) float32 slices at fractional ``positions``, air outside the image."""
        blend = blend_positions(positions, self.num_slices)
        out = np.full((len(positions), size_y, size_x), AIR_VALUE, dtype=np.float32)
        h, w = self.image.shape[1:]
        ys, ye = max(y0, 0), min(y0 + size_y, h)
        xs, xe = max(x0, 0), min(x0 + size_x, w)
        if ys >= ye or xs >= xe:
            return out
        lo = self.image[blend.lo, ys:ye, xs:xe].astype(np.float32)
        hi = self.image[blend.hi, ys:ye, xs:xe].astype(np.float32)
        out[:, ys - y0: ye - y0, xs - x0: xe - x0] = lo + (hi - lo) * blend.w_hi[:, None, None]
        return out


def prepare_volume(volume: Volume, cfg: PreprocessConfig) -> PreparedVolume:
    """Body crop, resample in-plane to ``cfg.spacing_mm`` and normalize a volume."""
    y0, y1, x0, x1 = body_crop_box(volume.hu_zyx, cfg.body_threshold_hu)
    region = volume.hu_zyx[:, y0:y1, x0:x1]
    scale = inplane_scale(volume.spacing_zyx_mm[1:], cfg.spacing_mm, region.shape[1:], cfg.max_size_px)
    slices = []
    for start in range(0, region.shape[0], 16):  # in chunks, to bound the float32 copy
        # slices missing from a DICOM series read with gaps allowed are NaN: the network sees air there
        hu = np.nan_to_num(region[start:start + 16].astype(np.float32), nan=AIR_HU)
        chunk = normalize_hu(torch.from_numpy(hu))
        slices.append(resample_inplane(chunk, scale).half())
    image = torch.cat(slices).numpy()
    return PreparedVolume(volume.volume_id, image, (y0, x0), scale, volume.spacing_zyx_mm, volume.shape)
