"""DICOM CT series through pydicom: sorted by position, rescaled to HU, reoriented to (z, y, x); the
volume keeps the series' voxel -> patient (LPS) geometry.

Compressed transfer syntaxes are decoded by pydicom's pixel handlers (Pillow and
pylibjpeg-openjpeg cover JPEG and JPEG 2000; RLE is native). A syntax no installed decoder
handles is reported as a DataError naming the file and the syntax.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from lesion_harvester.errors import DataError
from lesion_harvester.geometry.frames import RAS_TO_LPS
from lesion_harvester.io.atomic import atomic_write
from lesion_harvester.io.hu import volume_from_grid
from lesion_harvester.structures import Volume

log = logging.getLogger(__name__)

# CT, and images whose modality is "other" or missing (anonymised or converted exports); PET, MR,
# segmentations, structured reports and the like are not CT
CT_LIKE_MODALITIES = {"CT", "OT", ""}


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


def _pixels_hu(ds, path: Path) -> np.ndarray:
    # pydicom logs each failing decoder's traceback; a failure here becomes one DataError instead
    pydicom_log = logging.getLogger("pydicom")
    level = pydicom_log.level
    pydicom_log.setLevel(logging.CRITICAL)
    try:
        pixels = ds.pixel_array
    except Exception as exc:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", str(syntax))
        raise DataError(
            path,
            f"unsupported DICOM: cannot decode pixel data with transfer syntax {name} ({' '.join(str(exc).split())})",
            "decompress it first, e.g. with gdcmconv --raw, or install a decoder pydicom supports",
        ) from None
    finally:
        pydicom_log.setLevel(level)
    if pixels.ndim != 2:
        raise DataError(path, f"unsupported DICOM: expected one 2D grayscale frame, got shape {pixels.shape}")
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    return pixels.astype(np.float32) * slope + intercept


def _slice_frame(ds) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(row direction, column direction, position) in patient LPS mm, or None if the file has none."""
    orientation, position = ds.get("ImageOrientationPatient"), ds.get("ImagePositionPatient")
    if orientation is None or position is None or len(orientation) != 6 or len(position) != 3:
        return None
    values = np.array([float(v) for v in orientation])
    return values[:3], values[3:], np.array([float(v) for v in position])


def series_affine_lps(datasets: list, source: str) -> tuple[list[int], np.ndarray, bool]:
    """Order the slices of one series and build its voxel -> LPS affine.

    Input voxels are (i, j, k) = (column, row, slice), k in order of position along the slice
    normal. Returns (order of ``datasets`` by k, (4, 4) affine, whether the positions were known).

    Raises DataError for slices that disagree on orientation or pixel size, share a position, or
    are unevenly spaced (a missing slice): the affine would place some of them wrongly.
    """
    first = datasets[0]
    spacing = first.get("PixelSpacing")
    if spacing is None or len(spacing) != 2 or not all(float(v) > 0 for v in spacing):
        raise DataError(source, f"no valid PixelSpacing ({spacing}); cannot tell the pixel size")
    row_mm, col_mm = (float(v) for v in spacing)  # between rows, between columns
    frames = [_slice_frame(ds) for ds in datasets]
    if any(f is None for f in frames):
        # no patient geometry: axial, ordered by InstanceNumber, origin unknown
        order = sorted(range(len(datasets)), key=lambda n: int(datasets[n].get("InstanceNumber", 0) or 0))
        dz = float(first.get("SpacingBetweenSlices") or first.get("SliceThickness") or 1.0)
        return order, np.diag([col_mm, row_mm, -dz, 1.0]), False
    row_dir, col_dir, _ = frames[0]
    for ds, frame in zip(datasets, frames):
        if not np.allclose(frame[0], row_dir, atol=1e-3) or not np.allclose(frame[1], col_dir, atol=1e-3):
            raise DataError(source, "slices of one series have different ImageOrientationPatient")
        if not np.allclose([float(v) for v in ds.get("PixelSpacing", spacing)], spacing, rtol=1e-4):
            raise DataError(source, "slices of one series have different PixelSpacing")
    normal = np.cross(row_dir, col_dir)
    depth = np.array([float(np.dot(f[2], normal)) for f in frames])
    order = [int(n) for n in np.argsort(depth, kind="stable")]
    positions = np.array([frames[n][2] for n in order])
    affine = np.eye(4)
    affine[:3, 0] = row_dir * col_mm  # i (column index) runs along the row direction
    affine[:3, 1] = col_dir * row_mm
    affine[:3, 3] = positions[0]
    if len(order) > 1:
        steps = np.diff(depth[order])
        if np.any(steps <= 1e-4):
            raise DataError(source, "two slices share one position; is this more than one series?")
        dz = float(np.median(steps))
        if np.max(np.abs(steps - dz)) > 0.05 * dz + 1e-3:
            raise DataError(source, f"uneven slice positions (steps {steps.min():.3f} to {steps.max():.3f} mm, "
                                    f"median {dz:.3f}): missing slices or a mixed series",
                            "export the complete series")
        affine[:3, 2] = (positions[-1] - positions[0]) / (len(order) - 1)  # keeps a gantry tilt's shear
    else:
        dz = float(first.get("SpacingBetweenSlices") or first.get("SliceThickness") or 1.0)
        affine[:3, 2] = normal * dz
    return order, affine, True


def read_dicom_series(paths: list[Path], volume_id: str, source: str) -> Volume:
    """Read one series (its files in any order, each read once) into a Volume.

    The volume keeps the series' geometry in LPS (DICOM's frame) and its slices' SOPInstanceUIDs
    and files in k order (``volume.extra["dicom"]``, for a DICOM Segmentation that refers to them).
    """
    datasets = []
    for path in paths:
        try:
            datasets.append(pydicom.dcmread(path))
        except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
            raise DataError(path, f"not a readable DICOM file ({exc})") from None
    order, affine_lps, positioned = series_affine_lps(datasets, source)
    slices = []
    for n in order:
        hu = _pixels_hu(datasets[n], paths[n])
        if slices and hu.shape != slices[0].shape:
            raise DataError(paths[n], f"slice is {hu.shape} but the series' first slice is {slices[0].shape}")
        slices.append(hu)
    hu_ijk = np.transpose(np.stack(slices), (2, 1, 0))  # (k, row j, column i) -> (i, j, k)
    volume = volume_from_grid(volume_id, hu_ijk, RAS_TO_LPS @ affine_lps, "LPS", source)
    first = datasets[order[0]]
    info = {"study_uid": str(first.get("StudyInstanceUID", "")), "series_uid": str(first.get("SeriesInstanceUID", "")),
            "sop_instance_uids": [_sop_instance_uid(datasets[n]) for n in order],
            "files": [str(paths[n]) for n in order]}
    geometry = volume.geometry if positioned else dataclasses.replace(volume.geometry, origin_known=False)
    return dataclasses.replace(volume, geometry=geometry, extra={**volume.extra, "dicom": info})


def _sop_instance_uid(ds) -> str:
    meta = getattr(ds, "file_meta", None)
    return str(ds.get("SOPInstanceUID") or (meta.get("MediaStorageSOPInstanceUID", "") if meta else ""))


def _skip_reason(ds) -> str | None:
    """Why a file is not a slice of a CT volume, or None if it is one."""
    modality = str(ds.get("Modality", ""))
    if modality not in CT_LIKE_MODALITIES:
        return f"modality {modality}, not CT"
    if "Rows" not in ds or "Columns" not in ds:
        return "no image (no Rows/Columns)"
    if "LOCALIZER" in [str(v).upper() for v in (ds.get("ImageType") or [])]:
        return "a localizer (ImageType LOCALIZER)"
    return None


def scan_dicom(path: str | Path) -> dict[str, list[Path]]:
    """List the CT series under a DICOM file or folder, reading headers only: {volume id: files}.

    Series that are not CT volumes (another modality, no image, a localizer) are skipped with one
    warning per series that says why.
    """
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
    skipped: dict[tuple[str, str, str], list[Path]] = defaultdict(list)
    for file in files:
        ds = _read_header(file)
        uid = str(ds.get("SeriesInstanceUID", "unknown"))
        reason = _skip_reason(ds)
        if reason is None:
            series[uid].append(file)
        else:
            skipped[(uid, str(ds.get("SeriesDescription", "") or "no description"), reason)].append(file)
    for (uid, description, reason), skipped_files in skipped.items():
        log.warning("%s: skipped series %s ('%s', %d files, e.g. %s): %s", path, uid, description,
                    len(skipped_files), skipped_files[0].name, reason)
    if not series:
        raise DataError(path, "no CT image slices found" + (" (every series was skipped: see the warnings)"
                                                            if skipped else ""))
    base = path.stem if path.is_file() else path.name
    ordered = [files for _uid, files in sorted(series.items())]
    return {base if len(ordered) == 1 else f"{base}_{i:02d}": files for i, files in enumerate(ordered)}


def read_dicom(path: str | Path) -> list[Volume]:
    """Read a DICOM file or a folder of DICOM files; one Volume per SeriesInstanceUID."""
    return [read_dicom_series(files, volume_id, str(path)) for volume_id, files in scan_dicom(path).items()]


def write_dicom_seg(path: str | Path, labels_ijk: np.ndarray, source_files: list[str], scores: list[float],
                    software_version: str) -> None:
    """A DICOM Segmentation (highdicom) of the series in ``source_files`` (k order), one segment per
    label of ``labels_ijk`` (I, J, K) on the series' grid, written atomically.

    Segment ``n`` is finding ``n``: a lesion found automatically, its score in the segment label.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    sources = [_read_header(Path(f)) for f in source_files]
    for ds in sources:  # some exports keep the SOP identity only in the file meta
        meta = getattr(ds, "file_meta", None) or {}
        if not ds.get("SOPClassUID") and meta.get("MediaStorageSOPClassUID"):
            ds.SOPClassUID = meta.MediaStorageSOPClassUID
        if not ds.get("SOPInstanceUID") and meta.get("MediaStorageSOPInstanceUID"):
            ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    algorithm = hd.AlgorithmIdentificationSequence(name="Lesion Harvester LPG", version=software_version,
                                                   family=codes.cid7162.ArtificialIntelligence)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=n, segment_label=f"finding {n} (score {score:.2f})",
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Lesion, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm)
        for n, score in enumerate(scores, start=1)]
    try:
        seg = _segmentation(hd, sources, labels_ijk, descriptions, software_version)
    except (AttributeError, ValueError, KeyError, TypeError) as exc:
        raise DataError(Path(source_files[0]).parent, f"cannot write a DICOM Segmentation for this series: "
                                                      f"{type(exc).__name__}: {exc}") from None
    with atomic_write(path) as handle:
        seg.save_as(handle)


def _segmentation(hd, sources, labels_ijk, descriptions, software_version):
    return hd.seg.Segmentation(
        source_images=sources, pixel_array=np.ascontiguousarray(np.transpose(labels_ijk, (2, 1, 0))),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
        series_instance_uid=hd.UID(), series_number=9001, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="Lesion Harvester", manufacturer_model_name="lesion-harvester detect",
        software_versions=software_version, device_serial_number="none", series_description="lesion findings")
