"""NIfTI volumes (.nii, .nii.gz) through nibabel, reoriented to the package's (z, y, x) frame; the
volume keeps the file's affine (world frame RAS) and the way back to its voxels."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.openers import ImageOpener

from lesion_harvester.errors import DataError
from lesion_harvester.io.atomic import atomic_write
from lesion_harvester.io.hu import volume_from_grid
from lesion_harvester.structures import Volume


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
    try:
        data = image.get_fdata(dtype=np.float32)  # applies scl_slope/scl_inter (NaN = identity)
    except Exception as exc:
        raise DataError(path, f"could not read the voxel data ({exc})") from None
    return volume_from_grid(nifti_id(path), data, image.affine, "RAS", str(path))


def write_label_map(path: str | Path, labels_ijk: np.ndarray, affine_ras: np.ndarray) -> None:
    """A uint16 label map on an input grid (I, J, K) with its voxel -> RAS affine, atomically."""
    image = nib.Nifti1Image(np.asarray(labels_ijk, dtype=np.uint16), np.asarray(affine_ras, dtype=np.float64))
    image.header.set_intent("label")
    image.set_qform(image.affine, code=1)
    image.set_sform(image.affine, code=1)
    name = Path(path).name
    suffix = ".nii.gz" if name.endswith(".nii.gz") else ".nii"
    with atomic_write(path) as handle:
        handle.write(image.to_bytes() if suffix == ".nii" else gzip.compress(image.to_bytes(), mtime=0))
