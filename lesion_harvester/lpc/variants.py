"""The LPC's variants by name (``lpc.variant``): which views of a proposal it reads, and in how many
dimensions its network sees them.

The paper's LPC reads three orthogonal views (multi-view); Fig. 5b compares it with an axial-only
LPC and a 3D one. A variant declares its views and their dimensions, and places its sampling grid
around a proposal (:meth:`LPCVariant.points`); the patches of every variant are then laid out alike,
(N, V, C, *P) for V views, C channels and a P-sided grid in 2 or 3 dimensions, and the classifier has
one ResNet-18 per view in those dimensions (:class:`~lesion_harvester.lpc.model.LesionProposalClassifier`).
Patch extraction, augmentation and the network read the variant from here, never its name.
"""

from __future__ import annotations

import dataclasses

import torch

from lesion_harvester.config import LPCConfig
from lesion_harvester.registry import Registry


class LPCVariant:
    """A variant: ``views`` patches per proposal, each a ``spatial_dims``-dimensional grid; ``label``
    names it in reports and figures."""

    views: int = 1
    spatial_dims: int = 2
    label: str = ""

    def points(self, centre_xyz: tuple[float, float, float], half_xy: float, half_z: float,
               grid: torch.Tensor) -> torch.Tensor:
        """Voxel coordinates (x, y, z) of the views' samples: (views, *[P] * spatial_dims, 3).

        Args:
            centre_xyz: the patch centre in prepared voxels (the box centre, the key slice).
            half_xy, half_z: half the patch side in prepared pixels and in slices.
            grid: (P,) the sample positions along a side, from -1 to 1.
        """
        raise NotImplementedError

    def comparison_settings(self, cfg: LPCConfig) -> LPCConfig:
        """``cfg`` for this variant when it is trained beside the preset's LPC (the paper's Fig. 5b)."""
        return cfg


def _axial(centre_xyz, half_xy: float, grid: torch.Tensor) -> torch.Tensor:
    cx, cy, cz = centre_xyz
    a, b = torch.meshgrid(grid, grid, indexing="ij")  # rows, columns of a view
    return torch.stack([cx + b * half_xy, cy + a * half_xy, torch.full_like(a, cz)], dim=-1)


class MultiView(LPCVariant):
    """The paper's LPC: axial, coronal and sagittal views, each through its own 2D ResNet-18."""

    views = 3
    label = "multi-view"

    def points(self, centre_xyz, half_xy, half_z, grid):
        cx, cy, cz = centre_xyz
        a, b = torch.meshgrid(grid, grid, indexing="ij")
        coronal = torch.stack([cx + b * half_xy, torch.full_like(a, cy), cz + a * half_z], dim=-1)
        sagittal = torch.stack([torch.full_like(a, cx), cy + b * half_xy, cz + a * half_z], dim=-1)
        return torch.stack([_axial(centre_xyz, half_xy, grid), coronal, sagittal])


class Axial(LPCVariant):
    """The axial view alone (Fig. 5b)."""

    label = "axial"

    def points(self, centre_xyz, half_xy, half_z, grid):
        return _axial(centre_xyz, half_xy, grid)[None]


class Cube(LPCVariant):
    """A 3D patch through a 3D ResNet-18 (Fig. 5b)."""

    spatial_dims = 3
    label = "3D"

    def points(self, centre_xyz, half_xy, half_z, grid):
        cx, cy, cz = centre_xyz
        gz, gy, gx = torch.meshgrid(grid, grid, grid, indexing="ij")
        return torch.stack([cx + gx * half_xy, cy + gy * half_xy, cz + gz * half_z], dim=-1)[None]

    def comparison_settings(self, cfg: LPCConfig) -> LPCConfig:
        # half the side (at least 16): a cube of P^3 samples costs P times a view's
        return dataclasses.replace(cfg, patch_px=max(16, cfg.patch_px // 2))


VARIANTS: Registry[LPCVariant] = Registry("LPC variant")
VARIANTS.register("multiview", MultiView())
VARIANTS.register("axial", Axial())
VARIANTS.register("3d", Cube())
