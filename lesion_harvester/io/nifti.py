"""NIfTI volumes (.nii, .nii.gz) through nibabel, reoriented to the package's (z, y, x) frame."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.openers import ImageOpener

from lesion_harvester.errors import DataError
from lesion_harvester.io.hu import to_int16_hu
from lesion_harvester.structures import Volume

# Voxel axes (i, j, k) -> patient Left, Posterior, Inferior: x runs right->left, y anterior->posterior,
# z superior->inferior, which after transposing to (k, j, i) is the package's (z, y, x) frame.
TARGET_AXCODES = ("L", "P", "I")


def nifti_id(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def read_nifti(path: str | Path) -> Volume:
    """Read a 3D CT NIfTI file as a Volume in HU (scl_slope/scl_inter applied; NaN means identity)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        image = nib.load(str(path))
    except Exception as exc:
        raise DataError(path, f"not a readable NIfTI file ({exc})") from None
    shape = image.shape
    if len(shape) == 4 and shape[3] == 1:
        image = image.slicer[..., 0]
    elif len(shape) != 3:
        raise DataError(path, f"expected a 3D volume, got shape {shape}")
    # nibabel silently replaces zero pixdims by 1 on load; check the header as stored
    with ImageOpener(str(path)) as handle:
        raw_zooms = type(image.header).from_fileobj(handle, check=False)["pixdim"][1:4]
    zooms = image.header.get_zooms()[:3]
    if not all(np.isfinite(z) and z > 0 for z in list(raw_zooms) + list(zooms)):
        raise DataError(path, f"invalid voxel spacing {tuple(float(z) for z in raw_zooms)} mm in the header")
    current = nib.orientations.io_orientation(image.affine)
    target = nib.orientations.axcodes2ornt(TARGET_AXCODES)
    transform = nib.orientations.ornt_transform(current, target)
    try:
        data = image.get_fdata(dtype=np.float32)  # applies scl_slope/scl_inter (NaN = identity)
    except Exception as exc:
        raise DataError(path, f"could not read the voxel data ({exc})") from None
    data = nib.orientations.apply_orientation(data, transform)
    # the reoriented spacing: axis i of the result came from input axis transform[i, 0]
    spacing_xyz = [float(zooms[int(axis)]) for axis in transform[:, 0]]
    hu_zyx = np.ascontiguousarray(np.transpose(data, (2, 1, 0)))
    return Volume(
        volume_id=nifti_id(path),
        hu_zyx=to_int16_hu(hu_zyx, str(path)),
        spacing_zyx_mm=(spacing_xyz[2], spacing_xyz[1], spacing_xyz[0]),
        source=str(path),
    )
