"""NIfTI volumes (.nii, .nii.gz) through nibabel, reoriented to the package's (z, y, x) frame; the
volume keeps the file's affine (world frame RAS) and the way back to its voxels."""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.openers import ImageOpener

from lesion_harvester.errors import DataError
from lesion_harvester.io.hu import check_voxel_count, volume_from_grid
from lesion_harvester.io.lfs import check_not_lfs_pointer
from lesion_harvester.storage.atomic import atomic_write
from lesion_harvester.structures import Volume

GUNZIP_CHUNK = 2**20  # bytes decompressed per step (a read allocates a whole step first)


def nifti_id(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def read_nifti(path: str | Path) -> Volume:
    """Read a 3D CT NIfTI file as a Volume in HU (scl_slope/scl_inter applied; NaN means identity).

    Everything the header declares is checked before the voxels are read: a complex or non-scalar
    voxel type, more voxels than :func:`~lesion_harvester.io.hu.max_voxels`, or more voxel bytes than
    the file holds (a damaged or forged header) end in a DataError without allocating the grid.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    check_not_lfs_pointer(path)  # a folder of NIfTI files reaches here without the loader's check
    image = _load_header(path)
    proxy = image.dataobj  # nibabel's lazy reader: where the voxels lie in the file and how they scale
    _check_voxel_type(proxy.dtype, path)
    count = check_voxel_count(path, image.shape)
    if count == 0:
        raise DataError(path, f"empty volume: the header declares shape {image.shape}")
    shape = image.shape
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    elif len(shape) != 3:
        raise DataError(path, f"expected a 3D volume, got shape {shape}")
    _check_spacing(path, image)
    try:
        hu_ijk = _scaled_float32(_read_voxels(path, proxy, count), proxy)
    except MemoryError:
        raise DataError(path, f"not enough memory to read its {count:,} voxels") from None
    return volume_from_grid(nifti_id(path), hu_ijk.reshape(shape), image.affine, "RAS", str(path))


def _one_line(exc: BaseException) -> str:
    """An exception as one line: its type (the whole message of some, e.g. MemoryError) and its text."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _load_header(path: Path) -> nib.Nifti1Image:
    """The image with its header parsed and its voxels not read (nibabel reads them lazily)."""
    try:
        image = nib.load(str(path))
    except Exception as exc:
        raise DataError(path, f"not a readable NIfTI file ({_one_line(exc)})") from None
    if not isinstance(image, nib.Nifti1Image):  # Nifti2Image is a subclass
        raise DataError(path, f"not a NIfTI-1/2 file (nibabel reads it as {type(image).__name__})")
    return image


def _check_voxel_type(dtype: np.dtype, path: Path) -> None:
    if dtype.kind == "c":
        raise DataError(path, f"complex voxels ({dtype}); CT is real-valued")
    if dtype.kind not in "iuf":  # RGB (structured) or boolean voxels
        raise DataError(path, f"voxels of type {dtype} are not scalar numbers; CT holds one HU value per voxel")


def _check_spacing(path: Path, image: nib.Nifti1Image) -> None:
    # nibabel silently replaces zero pixdims by 1 on load; check the header as stored
    with ImageOpener(str(path)) as handle:
        raw_zooms = type(image.header).from_fileobj(handle, check=False)["pixdim"][1:4]
    zooms = image.header.get_zooms()[:3]
    if not all(np.isfinite(z) and z > 0 for z in list(raw_zooms) + list(zooms)):
        raise DataError(path, f"invalid voxel spacing {tuple(float(z) for z in raw_zooms)} mm in the header")


def _read_voxels(path: Path, proxy, count: int) -> np.ndarray:
    """The stored (unscaled) voxels, the header's shape and dtype, after checking that the file holds
    the ``count`` voxels its header declares (``proxy``: the image's nibabel ArrayProxy)."""
    shape, dtype, offset, order = proxy.shape, proxy.dtype, int(proxy.offset), proxy.order
    needed = offset + count * dtype.itemsize
    if path.name.endswith(".gz"):
        content = _gunzip_prefix(path, needed)
        if len(content) < needed:
            raise DataError(path, _short_message(shape, dtype, offset, len(content), "decompressed data"))
        return np.ndarray(shape, dtype=dtype, buffer=content, offset=offset, order=order)
    size = path.stat().st_size
    if size < needed:
        raise DataError(path, _short_message(shape, dtype, offset, size, "file"))
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order=order)


def _short_message(shape: tuple[int, ...], dtype: np.dtype, offset: int, have: int, what: str) -> str:
    needed = offset + math.prod(shape) * dtype.itemsize
    return (f"truncated or damaged: the header declares {' x '.join(map(str, shape))} voxels of {dtype} "
            f"({needed:,} bytes from byte {offset}) but the {what} holds {have:,} bytes")


def _gunzip_prefix(path: Path, limit: int) -> bytearray:
    """The first ``limit`` bytes of a gzip file's content (all of it if shorter).

    The buffer grows with the data actually decompressed, never to what a header claims: the
    uncompressed size cannot be known without decompressing (the gzip trailer keeps it only
    modulo 4 GiB, and only for the last member), so a lying header costs no more memory than the
    file's real content.
    """
    content = bytearray()
    try:
        with gzip.open(path, "rb") as stream:
            while len(content) < limit:
                chunk = stream.read(min(GUNZIP_CHUNK, limit - len(content)))
                if not chunk:
                    break
                content += chunk
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(path, f"corrupt or truncated gzip data ({_one_line(exc)})") from None
    return content


def _scaled_float32(stored: np.ndarray, proxy) -> np.ndarray:
    """HU = stored * scl_slope + scl_inter as float32 (a new array), as nibabel scales them (slope 1 and
    intercept 0 where scl_slope is 0 or NaN)."""
    slope, inter = float(proxy.slope), float(proxy.inter)
    hu = stored.astype(np.float32)
    if slope != 1:
        hu *= np.float32(slope)
    if inter:
        hu += np.float32(inter)
    return hu


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
