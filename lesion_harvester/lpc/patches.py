"""Patches around 3D proposals for the LPC: axial, coronal and sagittal views (or a 3D cube, as the
variant places them: :mod:`.variants`).

A proposal's in-plane extent (its 3D box), padded by ``pad_px`` original pixels, is made square
and isotropic in millimetres and sampled on a ``patch_px`` grid centred on the box centre and the
proposal's key slice (highest 2D score). Coronal and sagittal views span the same millimetres
across slices. Each view has one channel per HU window. Sampling reads the cached prepared
volume (trilinear interpolation, air outside).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from lesion_harvester.config import LPCConfig
from lesion_harvester.geometry.preprocess import stored_to_hu
from lesion_harvester.lpc.variants import VARIANTS
from lesion_harvester.preprocessing import AIR_VALUE, PreparedVolume
from lesion_harvester.structures import Tracklet


def proposal_geometry(t: Tracklet, pv: PreparedVolume, pad_px: float) -> tuple[float, float, float, float, float]:
    """(centre x, centre y, key z, half side in prepared pixels, half side in slices) of the patch
    around a proposal's extent padded by ``pad_px`` original pixels."""
    box = pv.to_prepared(np.array(t.box_3d().box_xyxy_px))[0]
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    side = max(box[2] - box[0], box[3] - box[1]) + 2 * pad_px * pv.scale
    pixel_mm = pv.spacing_zyx_mm[1] / pv.scale
    dz = pv.spacing_zyx_mm[0]
    half_slices = 0.0 if not math.isfinite(dz) else (side / 2) * pixel_mm / dz
    return cx, cy, float(t.z_indices[t.key_index]), side / 2, half_slices


def patch_channels(cfg: LPCConfig) -> int:
    """Channels per view: one per HU window, for the context patch and, if set, the close-up."""
    return len(cfg.windows_hu) * (2 if cfg.close_up_pad_px else 1)


def extract_patches(pv: PreparedVolume, tracklets: list[Tracklet], cfg: LPCConfig) -> torch.Tensor:
    """Patches of a volume's proposals: (N, V, C, *[P] * D), the V views of ``cfg.variant`` (3 for
    ``multiview``: axial, coronal, sagittal; 1 for ``axial`` and ``3d``), each a D-dimensional grid of
    side P (D = 3 for ``3d``, else 2); C = ``patch_channels(cfg)``, values scaled to [0, 1].
    The context patch (extent + ``pad_px``) comes first; the close-up (extent + ``close_up_pad_px``)
    repeats the windows at a finer grid, so that a small lesion spans more than a few samples.
    """
    pads = (cfg.pad_px, cfg.close_up_pad_px) if cfg.close_up_pad_px else (cfg.pad_px,)
    return torch.cat([_extract(pv, tracklets, cfg, pad) for pad in pads], dim=2)


def _extract(pv: PreparedVolume, tracklets: list[Tracklet], cfg: LPCConfig, pad_px: float) -> torch.Tensor:
    variant = VARIANTS.get(cfg.variant)
    p = cfg.patch_px
    if not tracklets:
        return torch.zeros((0, variant.views, len(cfg.windows_hu)) + (p,) * variant.spatial_dims)
    volume = torch.from_numpy(np.asarray(pv.image, dtype=np.float32))[None, None]  # (1, 1, Z, H, W)
    z_size, h, w = pv.image.shape
    grid = torch.linspace(-1.0, 1.0, p)
    points = []
    for tr in tracklets:
        cx, cy, cz, half_xy, half_z = proposal_geometry(tr, pv, pad_px)
        points.append(variant.points((cx, cy, cz), half_xy, half_z, grid))
    pts = torch.stack(points)  # (N, V, *[P] * D, 3), voxel (x, y, z)
    # grid_sample wants coordinates in [-1, 1] with align_corners=True: -1 = first voxel, 1 = last
    norm = torch.tensor([max(w - 1, 1), max(h - 1, 1), max(z_size - 1, 1)], dtype=torch.float32)
    coords = pts / norm * 2 - 1
    if z_size == 1:
        coords[..., 2] = 0.0
    flat = coords.reshape(1, -1, 1, 1, 3)
    sampled = F.grid_sample(volume - AIR_VALUE, flat, mode="bilinear", padding_mode="zeros", align_corners=True)
    values = sampled.reshape(pts.shape[:-1]) + AIR_VALUE  # air outside the volume
    hu = stored_to_hu(values)
    windows = [((hu - lo) / (hi - lo)).clamp(0, 1) for lo, hi in cfg.windows_hu]
    return torch.stack(windows, dim=2)  # (N, V, C, *[P] * D)
