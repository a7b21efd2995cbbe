"""Coordinate frames of a volume: its array, the input file's voxel grid, and the patient's world.

Three frames, written with the axis order each one is read in:

- **array** ``(x, y, z)``: voxel indices of ``Volume.hu_zyx[z, y, x]`` (the package's frame: x toward
  the patient's left, y posterior, z inferior, as closely as the acquisition allows); voxel centres
  lie at integers, so ``box_xyxy_px`` and ``z_index`` are points of this frame.
- **input** ``(i, j, k)``: voxel indices of the file the volume was read from (NIfTI: its array
  axes; a DICOM series: column, row, slice in order of position along the slice normal).
- **world** millimetres, ``RAS`` (NIfTI's and nibabel's convention: +x Right, +y Anterior, +z
  Superior) or ``LPS`` (DICOM's: +x Left, +y Posterior, +z Superior), always named.

The array is the input grid with its axes permuted and flipped (never resampled), so array <-> input
is exact integer arithmetic and array <-> world is one affine. Everything here is pure: matrices and
points in, matrices and points out.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from nibabel import orientations

WorldFrame = Literal["RAS", "LPS"]
WORLD_FRAMES: tuple[WorldFrame, ...] = ("RAS", "LPS")
# voxel axes (x, y, z) of the array -> patient Left, Posterior, Inferior
ARRAY_AXCODES = ("L", "P", "I")
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # its own inverse


def world_matrix(frame: WorldFrame) -> np.ndarray:
    """(4, 4) matrix from RAS mm to ``frame`` mm."""
    if frame not in WORLD_FRAMES:
        raise ValueError(f"unknown world frame {frame!r}; expected one of {WORLD_FRAMES}")
    return np.eye(4) if frame == "RAS" else RAS_TO_LPS.copy()


def apply_affine(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(4, 4) homogeneous ``matrix`` applied to (N, 3) or (3,) ``points``; same shape out."""
    points = np.asarray(points, dtype=np.float64)
    flat = points.reshape(-1, 3)
    out = flat @ matrix[:3, :3].T + matrix[:3, 3]
    return out.reshape(points.shape)


def array_reorientation(affine_ras: np.ndarray, shape_ijk: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """How an input grid becomes the array frame.

    Args:
        affine_ras: (4, 4) input voxel (i, j, k, 1) -> RAS mm; must be invertible.
        shape_ijk: the input grid's size.

    Returns:
        ``(ornt, array_to_input)``: nibabel's orientation transform (for :func:`reorient_ijk`), and the
        (4, 4) signed permutation with offsets mapping array (x, y, z, 1) -> input (i, j, k, 1).
    """
    current = orientations.io_orientation(affine_ras)
    ornt = orientations.ornt_transform(current, orientations.axcodes2ornt(ARRAY_AXCODES))
    return ornt, orientations.inv_ornt_aff(ornt, tuple(int(s) for s in shape_ijk))


def reorient_ijk(data_ijk: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """(I, J, K) voxels of the input -> (Z, Y, X) array (a view where numpy allows)."""
    return np.transpose(orientations.apply_orientation(data_ijk, ornt), (2, 1, 0))


def array_spacing_zyx(affine_ras: np.ndarray, array_to_input: np.ndarray) -> tuple[float, float, float]:
    """Voxel size of the array along (z, y, x) in mm: the lengths of the affine's columns."""
    columns = (affine_ras[:3, :3] @ array_to_input[:3, :3])  # array (x, y, z) steps in mm
    dx, dy, dz = (float(np.linalg.norm(columns[:, a])) for a in range(3))
    return dz, dy, dx


def default_input_to_ras(spacing_zyx_mm: tuple[float, float, float]) -> np.ndarray:
    """Input (= array) (x, y, z, 1) -> RAS mm for data read without an affine (DeepLesion PNG, synthetic):
    the package's frame (x left, y posterior, z inferior) with its first voxel at the origin."""
    dz, dy, dx = spacing_zyx_mm
    return np.diag([-dx, -dy, -dz, 1.0])


def box_corners(box_xyz_min: np.ndarray, box_xyz_max: np.ndarray) -> np.ndarray:
    """The 8 corners (8, 3) of an axis-aligned box given by its two extreme corners."""
    lo, hi = np.asarray(box_xyz_min, np.float64), np.asarray(box_xyz_max, np.float64)
    picks = np.array([[(c >> a) & 1 for a in range(3)] for c in range(8)], dtype=bool)
    return np.where(picks, hi, lo)


def transform_box(matrix: np.ndarray, box_min: np.ndarray, box_max: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The axis-aligned bounds (min (3,), max (3,)) of a box's 8 corners under ``matrix``.

    Exact (and invertible) when ``matrix`` only permutes, flips and scales axes; for an oblique
    acquisition the bounds enclose the tilted box.
    """
    corners = apply_affine(matrix, box_corners(box_min, box_max))
    return corners.min(axis=0), corners.max(axis=0)


def to_input_grid(data_zyx: np.ndarray, array_to_input: np.ndarray) -> np.ndarray:
    """(Z, Y, X) data in the array frame -> the same voxels on the input grid (I, J, K); exact.

    The inverse of :func:`reorient_ijk`: the same nibabel reorientation, read off ``array_to_input``.
    """
    ornt = orientations.io_orientation(array_to_input)  # array axis -> input axis and direction
    return np.ascontiguousarray(orientations.apply_orientation(np.transpose(data_zyx, (2, 1, 0)), ornt))
