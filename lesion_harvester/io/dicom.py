"""DICOM CT series through pydicom: sorted by position, rescaled to HU, reoriented to (z, y, x); the
volume keeps the series' voxel -> patient (LPS) geometry.

Compressed transfer syntaxes are decoded by pydicom's pixel handlers (Pillow and
pylibjpeg-openjpeg cover JPEG and JPEG 2000; RLE is native). A syntax no installed decoder
handles is reported as a DataError naming the file and the syntax.

Padding outside the scanner's field of view is read as air (:data:`AIR_HU`), not as HU: the stored
values PixelPaddingValue names (with PixelPaddingRangeLimit, the range between the two), and any
value below :data:`CT_LOWEST_HU`, the modality's range (scanners pad with -2048 or -3024 HU where they
set no tag).

A folder's series are named by :func:`series_names`: SeriesDescription and SeriesNumber, else the
SeriesInstanceUID, the same rule for one series or many.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from lesion_harvester.errors import ConfigError, DataError
from lesion_harvester.geometry.frames import RAS_TO_LPS
from lesion_harvester.geometry.preprocess import AIR_HU  # padding outside the field of view is read as air
from lesion_harvester.io.hu import check_voxel_count, volume_from_grid
from lesion_harvester.io.lfs import LFS_FIX, git_lfs_pointer
from lesion_harvester.paths import safe_name
from lesion_harvester.storage.atomic import atomic_write
from lesion_harvester.structures import Volume

log = logging.getLogger(__name__)

# CT, and images whose modality is "other" or missing (anonymised or converted exports); PET, MR,
# segmentations, structured reports and the like are not CT
CT_LIKE_MODALITIES = {"CT", "OT", ""}
DICOM_GAPS_ENV = "LESION_HARVESTER_DICOM_GAPS"  # "nan": read a series with missing slices, NaN at their positions
PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
UNDEFINED_LENGTH = 0xFFFFFFFF
# below this no voxel is tissue or air (air is -1000 HU; CT scales start at -1024, and resampling or noise
# undershoots by a few hundred at most): scanners pad with -2000, -2048 or -3024 where they set no tag
CT_LOWEST_HU = -1500.0


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


def gaps_allowed() -> bool:
    """Whether ``$LESION_HARVESTER_DICOM_GAPS`` asks for missing slices as NaN (``nan``) rather than an
    error (unset, empty or ``error``)."""
    raw = os.environ.get(DICOM_GAPS_ENV, "").strip().lower()
    if raw in ("", "error"):
        return False
    if raw == "nan":
        return True
    raise ConfigError(f"{DICOM_GAPS_ENV}={raw!r}: expected 'nan' (read a series with missing slices, NaN at "
                      "their positions) or 'error' (the default)")


@contextlib.contextmanager
def _quiet_pydicom() -> Iterator[list[warnings.WarningMessage]]:
    """pydicom logs each failing decoder's traceback and warns about damaged files; a problem here
    becomes one DataError instead. Yields the warnings caught."""
    pydicom_log = logging.getLogger("pydicom")
    level = pydicom_log.level
    pydicom_log.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield caught
    finally:
        pydicom_log.setLevel(level)


def _parsed_end(ds) -> int | None:
    """Byte offset where the last element pydicom read ends (the dataset's, else the file meta's),
    or None where that is unknown (an element of undefined length, or one already decoded)."""
    for elements in (ds, getattr(ds, "file_meta", None)):
        if elements is None or not len(elements):
            continue
        last = elements.get_item(max(elements.keys()))  # the raw element: its offset and declared length
        tell, length = getattr(last, "value_tell", None), getattr(last, "length", None)
        if tell is None or length is None or length == UNDEFINED_LENGTH:
            return None
        return int(tell) + int(length)
    return None


def _dcmread(path: Path, header_only: bool):
    """pydicom's dataset of ``path`` (without the pixel data if ``header_only``), refusing a file that
    ends inside an element. pydicom reads such a file without a word: a value cut short, or its
    last elements missing."""
    try:
        with _quiet_pydicom() as caught, open(path, "rb") as handle:
            ds = pydicom.dcmread(handle, stop_before_pixels=header_only)
            size = os.fstat(handle.fileno()).st_size
            end = _parsed_end(ds)
            next_tag = b""
            if end is not None and end < size:
                handle.seek(end)
                next_tag = handle.read(2)
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError) as exc:
        raise DataError(path, f"not a readable DICOM file ({' '.join(str(exc).split())})") from None
    # pydicom's warning where an element of undefined length (encapsulated pixel data) is cut short
    if any("End of file reached" in str(w.message) for w in caught):
        raise DataError(path, f"truncated DICOM file ({size:,} bytes): it ends inside its pixel data")
    if end is not None and end > size:
        raise DataError(path, f"truncated DICOM file ({size:,} bytes): its last element runs to byte {end:,}")
    # a header-only read stops at the pixel data (group 7FE0, either byte order); a whole read at the end
    stopped_at_pixels = header_only and next_tag in (b"\xe0\x7f", b"\x7f\xe0")
    if end is not None and end < size and not stopped_at_pixels:
        raise DataError(path, f"truncated DICOM file ({size:,} bytes): it ends inside the element at byte {end:,}")
    return ds


def _read_header(path: Path):
    return _dcmread(path, header_only=True)


def _as_stored(value, ds) -> int:
    """A padding tag's value in the stored pixels' domain: "US or SS" tags are read with either sign
    whatever the pixels' PixelRepresentation, so -2000 may come as 63536 (and back)."""
    value, bits = int(value), int(ds.get("BitsAllocated", 16) or 16)
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    if signed and value >= 2 ** (bits - 1):
        return value - 2 ** bits
    if not signed and value < 0:
        return value + 2 ** bits
    return value


def padding_mask(ds, stored: np.ndarray, hu: np.ndarray) -> np.ndarray:
    """(rows, columns) bool: the padding of a slice outside the field of view, from its stored pixels
    and their HU. PixelPaddingValue alone marks its value; with PixelPaddingRangeLimit, every value
    between the two (inclusive); and every HU below :data:`CT_LOWEST_HU`, the modality's range."""
    mask = hu < CT_LOWEST_HU
    value, limit = ds.get("PixelPaddingValue"), ds.get("PixelPaddingRangeLimit")
    try:
        value = None if value is None else _as_stored(value, ds)
        limit = None if limit is None or value is None else _as_stored(limit, ds)
    except (TypeError, ValueError):  # a malformed tag (several values, text): the range rule still holds
        return mask
    if value is None:
        return mask
    lo, hi = (value, value) if limit is None else sorted((value, limit))
    return mask | ((stored >= lo) & (stored <= hi))


def _pixels_hu(ds, path: Path) -> tuple[np.ndarray, int]:
    """The slice's (rows, columns) float32 HU, its padding read as air (:func:`padding_mask`), and the
    number of padding pixels; or a DataError naming the file and what is wrong."""
    if not any(tag in ds for tag in PIXEL_DATA_KEYWORDS):
        raise DataError(path, "no pixel data: a DICOM file without an image (or one cut short before it)")
    _check_pixel_length(ds, path)
    try:
        with _quiet_pydicom():
            pixels = ds.pixel_array
    except Exception as exc:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", str(syntax))
        raise DataError(
            path,
            f"unsupported DICOM: cannot decode pixel data with transfer syntax {name} ({' '.join(str(exc).split())})",
            "decompress it first, e.g. with gdcmconv --raw, or install a decoder pydicom supports",
        ) from None
    if pixels.ndim != 2:
        raise DataError(path, f"unsupported DICOM: expected one 2D grayscale frame, got shape {pixels.shape}")
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    hu = pixels.astype(np.float32) * slope + intercept
    padding = padding_mask(ds, pixels, hu)
    hu[padding] = AIR_HU
    return hu, int(padding.sum())


def _check_pixel_length(ds, path: Path) -> None:
    """Uncompressed pixel data must hold Rows x Columns x samples of BitsAllocated (a shorter one
    is a truncated file whose pixel element declared less than the image needs)."""
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is None or syntax.is_compressed or "PixelData" not in ds:
        return
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        needed = (int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1) or 1) * frames
                  * int(ds.BitsAllocated) + 7) // 8
    except (AttributeError, TypeError, ValueError):
        return  # pydicom's decoder names what is missing
    have = len(ds.PixelData)
    if have < needed:
        raise DataError(path, f"truncated pixel data: {have:,} bytes where {ds.Rows} x {ds.Columns} pixels of "
                              f"{ds.BitsAllocated} bits need {needed:,}")


def _slice_frame(ds) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(row direction, column direction, position) in patient LPS mm, or None if the file has none."""
    orientation, position = ds.get("ImageOrientationPatient"), ds.get("ImagePositionPatient")
    if orientation is None or position is None or len(orientation) != 6 or len(position) != 3:
        return None
    values = np.array([float(v) for v in orientation])
    return values[:3], values[3:], np.array([float(v) for v in position])


@dataclasses.dataclass
class SeriesLayout:
    """Where the slices of one series go on its voxel grid.

    order: indices of the datasets by position along the slice normal; slice_k: the grid index k
    of each of them (consecutive, except where slices are missing); num_k: the grid's K;
    affine_lps: (4, 4) voxel (i, j, k, 1) -> LPS mm; positioned: whether the files gave positions.
    """

    order: list[int]
    slice_k: list[int]
    num_k: int
    affine_lps: np.ndarray
    positioned: bool

    @property
    def missing_k(self) -> list[int]:
        present = set(self.slice_k)
        return [k for k in range(self.num_k) if k not in present]


def series_affine_lps(datasets: list, source: str, paths: list[Path] | None = None,
                      allow_gaps: bool = False) -> SeriesLayout:
    """Order the slices of one series and build its voxel grid and voxel -> LPS affine.

    Input voxels are (i, j, k) = (column, row, slice), k in order of position along the slice
    normal, one k per median slice interval. Raises DataError for slices that disagree on
    orientation or pixel size (naming the odd file), share a position, or are unevenly spaced, and
    for missing slices unless ``allow_gaps`` (then their k are left empty, to be filled with NaN).
    """
    paths = paths if paths is not None else [Path(source)] * len(datasets)
    first = datasets[0]
    spacing = first.get("PixelSpacing")
    if spacing is None or len(spacing) != 2 or not all(float(v) > 0 for v in spacing):
        raise DataError(paths[0], f"no valid PixelSpacing ({spacing}); cannot tell the pixel size")
    row_mm, col_mm = (float(v) for v in spacing)  # between rows, between columns
    for ds, path in zip(datasets, paths):
        if not np.allclose([float(v) for v in ds.get("PixelSpacing", spacing)], spacing, rtol=1e-4):
            raise DataError(path, f"different PixelSpacing ({[float(v) for v in ds.PixelSpacing]} mm) from the "
                                  f"series' first slice ({[float(v) for v in spacing]} mm)")
    frames = [_slice_frame(ds) for ds in datasets]
    if all(f is None for f in frames):
        # no patient geometry: axial, ordered by InstanceNumber, origin unknown
        order = sorted(range(len(datasets)), key=lambda n: int(datasets[n].get("InstanceNumber", 0) or 0))
        dz = float(first.get("SpacingBetweenSlices") or first.get("SliceThickness") or 1.0)
        return SeriesLayout(order, list(range(len(order))), len(order), np.diag([col_mm, row_mm, -dz, 1.0]), False)
    row_dir, col_dir = _series_orientation(frames, paths)
    normal = np.cross(row_dir, col_dir)
    depth = np.array([float(np.dot(f[2], normal)) for f in frames])
    order = [int(n) for n in np.argsort(depth, kind="stable")]
    positions = np.array([frames[n][2] for n in order])
    affine = np.eye(4)
    affine[:3, 0] = row_dir * col_mm  # i (column index) runs along the row direction
    affine[:3, 1] = col_dir * row_mm
    affine[:3, 3] = positions[0]
    if len(order) == 1:
        dz = float(first.get("SpacingBetweenSlices") or first.get("SliceThickness") or 1.0)
        affine[:3, 2] = normal * dz
        return SeriesLayout(order, [0], 1, affine, True)
    uid = str(first.get("SeriesInstanceUID", "unknown"))
    slice_k = _slice_indices(depth[order], source, uid, allow_gaps)
    affine[:3, 2] = (positions[-1] - positions[0]) / slice_k[-1]  # keeps a gantry tilt's shear
    return SeriesLayout(order, slice_k, slice_k[-1] + 1, affine, True)


def _series_orientation(frames: list, paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """The (row, column) direction cosines every slice shares; a DataError names a slice without
    them, with invalid ones, or with another orientation than most of the series."""
    for frame, path in zip(frames, paths):
        if frame is None:
            raise DataError(path, "no ImagePositionPatient/ImageOrientationPatient, which the series' other "
                                  "slices have: cannot place this slice")
        row, col = frame[0], frame[1]
        if abs(np.linalg.norm(row) - 1) > 1e-2 or abs(np.linalg.norm(col) - 1) > 1e-2 or abs(row @ col) > 1e-2:
            raise DataError(path, f"invalid ImageOrientationPatient {np.round(np.r_[row, col], 6).tolist()}: the row "
                                  "and column directions must be orthogonal unit vectors")
    votes = Counter(tuple(np.round(np.r_[f[0], f[1]], 3)) for f in frames)
    reference = np.array(votes.most_common(1)[0][0])
    odd = [n for n, f in enumerate(frames) if not np.allclose(np.r_[f[0], f[1]], reference, atol=1e-3)]
    if odd:
        values = np.round(np.r_[frames[odd[0]][0], frames[odd[0]][1]], 6).tolist()
        raise DataError(paths[odd[0]], f"ImageOrientationPatient {values} differs from the {reference.tolist()} "
                                       f"of {len(frames) - len(odd)} of the series' {len(frames)} slices: a slice "
                                       "of another series?")
    return reference[:3], reference[3:]


def _slice_indices(depth: np.ndarray, source: str, uid: str, allow_gaps: bool) -> list[int]:
    """Grid index k of each slice from its position along the normal (mm, ascending).

    The slice interval is the median step; a step of n intervals (n >= 2, within 5%) is n - 1
    missing slices, refused unless ``allow_gaps``; any other step cannot lie on one grid.
    """
    steps = np.diff(depth)
    if np.any(steps <= 1e-4):
        n = int(np.argmax(steps <= 1e-4))
        raise DataError(source, f"two slices of series {uid} share the position {depth[n]:.3f} mm along the "
                                "slice normal; is this more than one series?")
    dz = float(np.median(steps))
    multiples = np.maximum(np.rint(steps / dz), 1)
    uneven = np.abs(steps - multiples * dz) > 0.05 * dz * multiples + 1e-3
    if np.any(uneven):
        raise DataError(source, f"uneven slice positions along the normal of series {uid}: "
                                f"{_intervals(depth, np.nonzero(uneven)[0])} where the median interval is "
                                f"{dz:.3f} mm (a mixed series?)", "export the complete series")
    gaps = np.nonzero(multiples > 1)[0]
    if gaps.size and not allow_gaps:
        missing = int(np.sum(multiples[gaps] - 1))
        raise DataError(source, f"uneven slice positions along the normal of series {uid}: missing slices "
                                f"({missing} at the median interval of {dz:.3f} mm) {_intervals(depth, gaps)}",
                        f"export the complete series, or set {DICOM_GAPS_ENV}=nan to read it with NaN slices at "
                        "the missing positions")
    if gaps.size:
        log.warning("%s: series %s has %d missing slice(s) (%s); NaN in the volume (%s=nan)", source, uid,
                    int(np.sum(multiples[gaps] - 1)), _intervals(depth, gaps), DICOM_GAPS_ENV)
    return [0, *(int(k) for k in np.cumsum(multiples))]


def _intervals(depth: np.ndarray, steps: np.ndarray, shown: int = 3) -> str:
    """'between 4.000 and 8.000 mm, ...': the intervals after slices ``steps`` (indices into ``depth``)."""
    text = ", ".join(f"between {depth[n]:.3f} and {depth[n + 1]:.3f} mm" for n in steps[:shown])
    return text + (f" and {len(steps) - shown} more" if len(steps) > shown else "")


def read_dicom_series(paths: list[Path], volume_id: str, source: str, allow_gaps: bool | None = None) -> Volume:
    """Read one series (its files in any order, each read once) into a Volume.

    A series with missing slices is a DataError unless ``allow_gaps`` (default: ``$LESION_HARVESTER_DICOM_GAPS``
    is ``nan``); then the volume is float32 with NaN slices at the missing positions, so that every slice
    keeps its true z. The volume keeps the series' geometry in LPS (DICOM's frame) and its slices'
    SOPInstanceUIDs and files in k order (``volume.extra["dicom"]``, None at a missing slice, for a
    DICOM Segmentation that refers to them), the patient ID, study and series UIDs, the series'
    description and number, and how many voxels of padding were read as air (``padding_voxels``).
    """
    allow_gaps = gaps_allowed() if allow_gaps is None else allow_gaps
    datasets = [_dcmread(path, header_only=False) for path in paths]
    layout = series_affine_lps(datasets, source, paths, allow_gaps)
    first = datasets[layout.order[0]]
    rows, columns = int(first.get("Rows", 0) or 0), int(first.get("Columns", 0) or 0)
    check_voxel_count(source, (columns, rows, layout.num_k), f"series {first.get('SeriesInstanceUID', '')}")
    hu_kji = np.full((layout.num_k, rows, columns), np.nan, dtype=np.float32)
    padding = 0
    for n, k in zip(layout.order, layout.slice_k):
        hu, padded = _pixels_hu(datasets[n], paths[n])
        if hu.shape != (rows, columns):
            raise DataError(paths[n], f"slice is {hu.shape} but the series' first slice is {(rows, columns)}")
        hu_kji[k] = hu
        padding += padded
    if padding:
        log.info("%s: %d voxels of padding outside the field of view (PixelPaddingValue %s, or below %g HU) read "
                 "as air (%g HU)", volume_id, padding, first.get("PixelPaddingValue", "not set"), CT_LOWEST_HU, AIR_HU)
    hu_ijk = np.transpose(hu_kji, (2, 1, 0))  # (k, row j, column i) -> (i, j, k)
    volume = volume_from_grid(volume_id, hu_ijk, RAS_TO_LPS @ layout.affine_lps, "LPS", source,
                              allow_nan=bool(layout.missing_k))
    by_k: dict[int, int] = dict(zip(layout.slice_k, layout.order))
    info = {"study_uid": str(first.get("StudyInstanceUID", "")), "series_uid": str(first.get("SeriesInstanceUID", "")),
            "patient_id": str(first.get("PatientID", "") or ""),
            "series_description": str(first.get("SeriesDescription", "") or ""),
            "series_number": _series_number(first), "padding_voxels": padding,
            "sop_instance_uids": [_sop_instance_uid(datasets[by_k[k]]) if k in by_k else None
                                  for k in range(layout.num_k)],
            "files": [str(paths[by_k[k]]) if k in by_k else None for k in range(layout.num_k)],
            "missing_k": layout.missing_k}
    geometry = volume.geometry if layout.positioned else dataclasses.replace(volume.geometry, origin_known=False)
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


def _series_number(ds) -> int | None:
    try:
        return int(ds.get("SeriesNumber"))
    except (TypeError, ValueError):
        return None


@dataclasses.dataclass(frozen=True)
class SeriesHeader:
    """What names and orders a series: its first file's SeriesInstanceUID, SeriesDescription,
    SeriesNumber, PatientID and StudyInstanceUID (empty or None where the files do not say)."""

    uid: str
    description: str
    number: int | None
    patient_id: str = ""
    study_uid: str = ""

    @classmethod
    def of(cls, ds) -> SeriesHeader:
        return cls(str(ds.get("SeriesInstanceUID", "") or ""), str(ds.get("SeriesDescription", "") or ""),
                   _series_number(ds), str(ds.get("PatientID", "") or ""), str(ds.get("StudyInstanceUID", "") or ""))


def series_names(headers: list[SeriesHeader], fallback: str) -> list[str]:
    """A name per series, the same rule for one series or many: the SeriesDescription made a plain file
    name and the SeriesNumber (``CT_Body_3.0_2``), the description alone, ``series_<number>``, else the
    SeriesInstanceUID, else ``fallback`` (the input's name). Of two series with one name (in the
    order given), the second gets ``_2``, the third ``_3``."""
    names, seen = [], Counter()
    for h in headers:
        description = safe_name(h.description, 64).strip("._")
        number = "" if h.number is None else str(h.number)
        base = "_".join(p for p in (description, number) if p) if description else (
            f"series_{number}" if number else safe_name(h.uid) or fallback)
        seen[base] += 1
        names.append(base if seen[base] == 1 else f"{base}_{seen[base]}")
    return names


def _no_dicom_message(folder: Path) -> str:
    """Why a folder holds no DICOM file, naming Git-LFS placeholders where they are what it holds."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    pointers = sum(1 for p in files if git_lfs_pointer(p))
    if pointers:
        return (f"no DICOM files (with the DICM preamble) in this folder: {pointers} of its {len(files)} files are "
                f"Git-LFS pointers, text placeholders of the images ({LFS_FIX})")
    return "no DICOM files (with the DICM preamble) in this folder"


def scan_dicom(path: str | Path) -> dict[str, list[Path]]:
    """List the CT series under a DICOM file or folder, reading headers only: {series name: files},
    ordered by patient, study, series number and UID, named by :func:`series_names`.

    Series that are not CT volumes (another modality, no image, a localizer) are skipped with one
    warning per series that says why.
    """
    path = Path(path)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = list_dicom_files(path)
        if not files:
            raise DataError(path, _no_dicom_message(path))
    else:
        raise DataError(path, "file or folder not found")
    series: dict[str, list[Path]] = defaultdict(list)
    headers: dict[str, SeriesHeader] = {}
    skipped: dict[tuple[str, str, str], list[Path]] = defaultdict(list)
    for file in files:
        ds = _read_header(file)
        uid = str(ds.get("SeriesInstanceUID", "unknown"))
        reason = _skip_reason(ds)
        if reason is None:
            series[uid].append(file)
            headers.setdefault(uid, SeriesHeader.of(ds))
        else:
            skipped[(uid, str(ds.get("SeriesDescription", "") or "no description"), reason)].append(file)
    for (uid, description, reason), skipped_files in skipped.items():
        log.warning("%s: skipped series %s ('%s', %d files, e.g. %s): %s", path, uid, description,
                    len(skipped_files), skipped_files[0].name, reason)
    if not series:
        raise DataError(path, "no CT image slices found" + (" (every series was skipped: see the warnings)"
                                                            if skipped else ""))
    uids = sorted(series, key=lambda u: (headers[u].patient_id, headers[u].study_uid,
                                         headers[u].number if headers[u].number is not None else 2**31, u))
    names = series_names([headers[u] for u in uids], path.stem if path.is_file() else path.name)
    return {name: series[uid] for name, uid in zip(names, uids)}


def read_dicom(path: str | Path, allow_gaps: bool | None = None) -> list[Volume]:
    """Read a DICOM file or a folder of DICOM files; one Volume per SeriesInstanceUID (``allow_gaps``:
    see :func:`read_dicom_series`)."""
    return [read_dicom_series(files, volume_id, str(path), allow_gaps)
            for volume_id, files in scan_dicom(path).items()]


def write_dicom_seg(path: str | Path, labels_ijk: np.ndarray, source_files: list[str | None], scores: list[float],
                    software_version: str) -> None:
    """A DICOM Segmentation (highdicom) of the series in ``source_files`` (k order), one segment per
    label of ``labels_ijk`` (I, J, K) on the series' grid, written atomically.

    Segment ``n`` is finding ``n``: a lesion found automatically, its score in the segment label. A
    missing slice (None in ``source_files``, NaN in the volume) has no instance to refer to: its
    labels are left out.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    present = [k for k, f in enumerate(source_files) if f is not None]
    labels_ijk = labels_ijk[:, :, present]
    sources = [_read_header(Path(source_files[k])) for k in present]  # type: ignore[arg-type]
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
