"""HU arrays and voxel grids as the readers hand them to :class:`~lesion_harvester.structures.Volume`,
and the voxel budget every reader checks before it allocates a grid."""

from __future__ import annotations

import math
import os

import numpy as np

from lesion_harvester.errors import ConfigError, DataError
from lesion_harvester.geometry.frames import WorldFrame, array_reorientation, array_spacing_zyx, reorient_ijk
from lesion_harvester.structures import SourceGeometry, Volume

MAX_VOXELS = 2**31  # default ceiling on one volume's voxels: 8 GiB as float32, far beyond any CT
MAX_VOXELS_ENV = "LESION_HARVESTER_MAX_VOXELS"
# an affine whose smallest singular value is below this fraction of its largest one squashes a
# dimension (relative, so that neither mm nor micrometre voxels trip it)
SINGULAR_RATIO = 1e-6


def max_voxels() -> int:
    """The voxel ceiling: ``$LESION_HARVESTER_MAX_VOXELS`` if set (a positive integer), else :data:`MAX_VOXELS`."""
    raw = os.environ.get(MAX_VOXELS_ENV, "").strip()
    if not raw:
        return MAX_VOXELS
    try:
        value = float(raw)  # "4e9" as well as "4000000000"
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 1):
        raise ConfigError(f"{MAX_VOXELS_ENV}={raw!r}: expected a positive number of voxels, e.g. {MAX_VOXELS}")
    return int(value)


def check_voxel_count(where: object, shape: tuple[int, ...], what: str = "the header") -> int:
    """Refuse a grid of more voxels than :func:`max_voxels`, before anything of its size is allocated.

    ``shape`` is the grid size as the input declares it (any number of axes). Returns the voxel count.
    """
    count = math.prod(int(s) for s in shape)
    limit = max_voxels()
    if count > limit:
        raise DataError(where, f"{what} declares a grid of {' x '.join(str(int(s)) for s in shape)} = {count:,} "
                               f"voxels, more than the limit of {limit:,}",
                        f"set {MAX_VOXELS_ENV} to a larger number of voxels to read it")
    return count


def to_int16_hu(hu: np.ndarray, where: str, allow_nan: bool = False) -> np.ndarray:
    """Round HU to int16, refusing values that would not fit (a sign of a wrong rescale).

    With ``allow_nan`` a grid holding NaN (slices a reader marked as missing) stays float32, its
    finite values rounded to whole HU; NaN still may not be infinite.
    """
    if hu.dtype == np.int16:
        return hu
    floating = np.issubdtype(hu.dtype, np.floating)
    finite = np.isfinite(hu) if floating else None
    has_nan = floating and not bool(np.all(finite))
    if has_nan and (not allow_nan or bool(np.any(np.isinf(hu)))):
        raise DataError(where, "volume contains NaN or infinite values")
    values = hu[finite] if has_nan else hu
    if values.size:
        lo, hi = float(values.min()), float(values.max())
        if lo < -32768 or hi > 32767:
            raise DataError(where, f"HU range [{lo}, {hi}] does not fit int16; is the rescale right?")
    if has_nan:
        return np.rint(hu).astype(np.float32)
    return np.rint(hu).astype(np.int16) if floating else hu.astype(np.int16)


def check_affine(affine_ras: np.ndarray, where: str) -> np.ndarray:
    """A (4, 4) voxel -> world affine as float64, or a DataError if it is not finite or not invertible."""
    affine_ras = np.asarray(affine_ras, dtype=np.float64)
    if affine_ras.shape != (4, 4) or not np.all(np.isfinite(affine_ras)):
        raise DataError(where, f"invalid voxel-to-world affine {affine_ras.tolist()}")
    singular_values = np.linalg.svd(affine_ras[:3, :3], compute_uv=False)
    if singular_values[0] <= 0 or singular_values[-1] < SINGULAR_RATIO * singular_values[0]:
        raise DataError(where, f"singular voxel-to-world affine {np.round(affine_ras[:3, :3], 6).tolist()}: "
                               "its voxels do not span 3D space")
    return affine_ras


def volume_from_grid(volume_id: str, hu_ijk: np.ndarray, affine_ras: np.ndarray, native_frame: WorldFrame,
                     source: str, allow_nan: bool = False) -> Volume:
    """An input voxel grid (I, J, K) in HU with its voxel -> RAS affine, as a Volume in the array frame.

    The grid is permuted and flipped to the package's (z, y, x) frame (never resampled), and the
    volume keeps the mapping back (:class:`~lesion_harvester.structures.SourceGeometry`). The volume
    is int16, or float32 where ``allow_nan`` lets NaN (missing slices) through.
    """
    affine_ras = check_affine(affine_ras, source)
    ornt, array_to_input = array_reorientation(affine_ras, hu_ijk.shape)
    dz, dy, dx = array_spacing_zyx(affine_ras, array_to_input)
    # the in-plane resampling assumes near-square pixels; a sagittal or coronal acquisition turned
    # axial has the slice interval as one pixel side
    if max(dy, dx) > 1.5 * min(dy, dx):
        raise DataError(source, f"axial pixels of {dy:.3g} x {dx:.3g} mm (rows x columns): not an axial "
                                "acquisition (sagittal or coronal slices?)", "resample it to axial slices first")
    hu_zyx = np.ascontiguousarray(reorient_ijk(hu_ijk, ornt))
    geometry = SourceGeometry(tuple(int(s) for s in hu_ijk.shape), array_to_input, affine_ras, native_frame)
    return Volume(volume_id=volume_id, hu_zyx=to_int16_hu(hu_zyx, source, allow_nan), spacing_zyx_mm=(dz, dy, dx),
                  source=source, geometry=geometry)
