"""DICOM CT series through pydicom: sorted by position, rescaled to HU, reoriented to (z, y, x).

Compressed transfer syntaxes are decoded by pydicom's pixel handlers (Pillow and
pylibjpeg-openjpeg cover JPEG and JPEG 2000; RLE is native). A syntax no installed decoder
handles is reported as a DataError naming the file and the syntax.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from lesion_harvester.errors import DataError
from lesion_harvester.io.hu import to_int16_hu
from lesion_harvester.structures import Volume

log = logging.getLogger(__name__)

CT_LIKE_MODALITIES = {"CT", "PT", "OT", ""}


def _is_dicom_file(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def list_dicom_files(folder: Path) -> list[Path]:
    """Files of ``folder`` (recursively) with the DICOM preamble, whatever their names."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and _is_dicom_file(p))


def _read_header(path: Path):
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise DataError(path, f"not a readable DICOM file ({exc})") from None


def _slice_geometry(ds, path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row direction, column direction, position) in patient LPS mm."""
    orientation = ds.get("ImageOrientationPatient")
    position = ds.get("ImagePositionPatient")
    if orientation is None or position is None:
        return np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), np.array([0, 0, float(ds.get("InstanceNumber", 0) or 0)])
    row_dir = np.array([float(v) for v in orientation[:3]])
    col_dir = np.array([float(v) for v in orientation[3:]])
    return row_dir, col_dir, np.array([float(v) for v in position])


def _pixels_hu(ds, path: Path) -> np.ndarray:
    try:
        pixels = ds.pixel_array
    except Exception as exc:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", str(syntax))
        raise DataError(
            path,
            f"unsupported DICOM: cannot decode pixel data with transfer syntax {name} ({exc})",
            "decompress it first, e.g. with gdcmconv --raw, or install a decoder pydicom supports",
        ) from None
    if pixels.ndim != 2:
        raise DataError(path, f"unsupported DICOM: expected one 2D grayscale frame, got shape {pixels.shape}")
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    return pixels.astype(np.float32) * slope + intercept


def read_dicom_series(paths: list[Path], volume_id: str, source: str) -> Volume:
    """Read one series (its files in any order) into a Volume."""
    headers = [(_read_header(p), p) for p in paths]
    row_dir, col_dir, _ = _slice_geometry(headers[0][0], headers[0][1])
    normal = np.cross(row_dir, col_dir)
    # Axial only: the row direction must run along patient x and the columns along patient y.
    if abs(abs(row_dir[0]) - 1) > 0.1 or abs(abs(col_dir[1]) - 1) > 0.1:
        raise DataError(
            source,
            f"unsupported DICOM: not an axial series (ImageOrientationPatient {list(row_dir) + list(col_dir)})",
        )
    # Sort superior -> inferior: DICOM patient z (LPS) grows toward the head.
    depth = [float(np.dot(_slice_geometry(ds, p)[2], normal)) * np.sign(normal[2] or 1) for ds, p in headers]
    order = np.argsort(-np.array(depth), kind="stable")
    headers = [headers[i] for i in order]
    depth_sorted = np.array([depth[i] for i in order])
    first = headers[0][0]
    spacing = first.get("PixelSpacing")
    if spacing is None:
        raise DataError(headers[0][1], "no PixelSpacing; cannot tell the pixel size")
    sy, sx = (float(v) for v in spacing)
    if len(headers) > 1:
        steps = -np.diff(depth_sorted)
        if np.any(steps <= 1e-4):
            raise DataError(source, "two slices share one position; is this more than one series?")
        dz = float(np.median(steps))
        if np.max(np.abs(steps - dz)) > 0.05 * dz + 1e-3:
            log.warning(
                "%s: uneven slice positions (steps %.3f..%.3f mm); using the median %.3f mm",
                source,
                steps.min(),
                steps.max(),
                dz,
            )
    else:
        dz = float(first.get("SpacingBetweenSlices") or first.get("SliceThickness") or math.nan)
    slices = []
    for _header, path in headers:
        full = pydicom.dcmread(path)
        hu = _pixels_hu(full, path)
        if slices and hu.shape != slices[0].shape:
            raise DataError(path, f"slice is {hu.shape} but the series' first slice is {slices[0].shape}")
        slices.append(hu)
    volume = np.stack(slices)
    # Frame: x toward patient Left (+x in LPS), y toward Posterior (+y in LPS).
    if row_dir[0] < 0:
        volume = volume[:, :, ::-1]
    if col_dir[1] < 0:
        volume = volume[:, ::-1, :]
    return Volume(
        volume_id=volume_id,
        hu_zyx=to_int16_hu(np.ascontiguousarray(volume), source),
        spacing_zyx_mm=(dz, sy, sx),
        source=source,
    )


def read_dicom(path: str | Path) -> list[Volume]:
    """Read a DICOM file or a folder of DICOM files; one Volume per SeriesInstanceUID."""
    path = Path(path)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = list_dicom_files(path)
        if not files:
            raise DataError(path, "no DICOM files (with the DICM preamble) in this folder")
    else:
        raise DataError(path, "file or folder not found")
    series: dict[str, list[Path]] = defaultdict(list)
    for file in files:
        ds = _read_header(file)
        modality = str(ds.get("Modality", ""))
        if modality not in CT_LIKE_MODALITIES:
            log.warning("%s: skipping modality %s", file, modality)
            continue
        if "PixelData" not in ds and "FloatPixelData" not in ds:
            full = pydicom.dcmread(file)
            if "PixelData" not in full:
                log.warning("%s: no pixel data, skipped", file)
                continue
        series[str(ds.get("SeriesInstanceUID", "unknown"))].append(file)
    if not series:
        raise DataError(path, "no CT image slices found")
    volumes = []
    for i, (_uid, paths) in enumerate(sorted(series.items())):
        base = path.stem if path.is_file() else path.name
        volume_id = base if len(series) == 1 else f"{base}_{i:02d}"
        volumes.append(read_dicom_series(paths, volume_id, str(path)))
    return volumes
