"""HU arrays and voxel grids as the readers hand them to :class:`~lesion_harvester.structures.Volume`."""

from __future__ import annotations

import numpy as np

from lesion_harvester.errors import DataError
from lesion_harvester.geometry.frames import WorldFrame, array_reorientation, array_spacing_zyx, reorient_ijk
from lesion_harvester.structures import SourceGeometry, Volume


def to_int16_hu(hu: np.ndarray, where: str) -> np.ndarray:
    """Round HU to int16, refusing values that would not fit (a sign of a wrong rescale)."""
    if hu.dtype == np.int16:
        return hu
    if np.issubdtype(hu.dtype, np.floating) and not np.all(np.isfinite(hu)):
        raise DataError(where, "volume contains NaN or infinite values")
    lo, hi = float(hu.min()), float(hu.max())
    if lo < -32768 or hi > 32767:
        raise DataError(where, f"HU range [{lo}, {hi}] does not fit int16; is the rescale right?")
    return np.rint(hu).astype(np.int16) if np.issubdtype(hu.dtype, np.floating) else hu.astype(np.int16)


def volume_from_grid(volume_id: str, hu_ijk: np.ndarray, affine_ras: np.ndarray, native_frame: WorldFrame,
                     source: str) -> Volume:
    """An input voxel grid (I, J, K) with its voxel -> RAS affine, as a Volume in the array frame.

    The grid is permuted and flipped to the package's (z, y, x) frame (never resampled), and the
    volume keeps the mapping back (:class:`~lesion_harvester.structures.SourceGeometry`).
    """
    affine_ras = np.asarray(affine_ras, dtype=np.float64)
    if affine_ras.shape != (4, 4) or not np.all(np.isfinite(affine_ras)):
        raise DataError(source, f"invalid voxel-to-world affine {affine_ras.tolist()}")
    if abs(np.linalg.det(affine_ras[:3, :3])) < 1e-9:
        raise DataError(source, f"singular voxel-to-world affine {np.round(affine_ras[:3, :3], 6).tolist()}: "
                                "its voxels do not span 3D space")
    ornt, array_to_input = array_reorientation(affine_ras, hu_ijk.shape)
    dz, dy, dx = array_spacing_zyx(affine_ras, array_to_input)
    # the in-plane resampling assumes near-square pixels; a sagittal or coronal acquisition turned
    # axial has the slice interval as one pixel side
    if max(dy, dx) > 1.5 * min(dy, dx):
        raise DataError(source, f"axial pixels of {dy:.3g} x {dx:.3g} mm (rows x columns): not an axial "
                                "acquisition (sagittal or coronal slices?)", "resample it to axial slices first")
    hu_zyx = np.ascontiguousarray(reorient_ijk(hu_ijk, ornt))
    geometry = SourceGeometry(tuple(int(s) for s in hu_ijk.shape), array_to_input, affine_ras, native_frame)
    return Volume(volume_id=volume_id, hu_zyx=to_int16_hu(hu_zyx, source), spacing_zyx_mm=(dz, dy, dx),
                  source=source, geometry=geometry)
