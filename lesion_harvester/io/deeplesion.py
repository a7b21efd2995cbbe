"""DeepLesion on disk: ``Images_png/PPPPPP_SS_RR/NNN.png`` slices plus ``DL_info.csv``.

Conventions (see ../shared/data/deeplesion/README.md):

- PNG slice numbers start at 1; HU = pixel - 32768.
- A sub-volume is a run of consecutive slices of one series, keyed ``PPPPPP_SS_RR_AAA-BBB``
  (inclusive, 1-based), as DeepLesion's ``DL_save_nifti.py`` and the released annotation files
  name them. A lesion's ``Slice_range`` lies inside its sub-volume; ranges of one series that
  overlap or touch are merged into one sub-volume, as continuity grouping does.
- Annotations address a slice by its 0-based offset ``z = Key_slice_index - AAA``.
- Boxes (``Bounding_boxes``) are pixel ``x1, y1, x2, y2``: the RECIST extent padded by 5 px.
"""

from __future__ import annotations

import csv
import logging
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lesion_harvester.errors import DataError
from lesion_harvester.io.png16 import read_png_hu
from lesion_harvester.structures import RecistMark, Volume

log = logging.getLogger(__name__)

DL_INFO_COLUMNS = (
    "File_name",
    "Patient_index",
    "Study_index",
    "Series_ID",
    "Key_slice_index",
    "Measurement_coordinates",
    "Bounding_boxes",
    "Lesion_diameters_Pixel_",
    "Normalized_lesion_location",
    "Coarse_lesion_type",
    "Possibly_noisy",
    "Slice_range",
    "Spacing_mm_px_",
    "Image_size",
    "DICOM_windows",
    "Patient_gender",
    "Patient_age",
    "Train_Val_Test",
)
SPLIT_NAMES = {1: "train", 2: "val", 3: "test"}
LESION_TYPES = {
    -1: "unknown",
    1: "bone",
    2: "abdomen",
    3: "mediastinum",
    4: "liver",
    5: "lung",
    6: "kidney",
    7: "soft tissue",
    8: "pelvis",
}
BOX_PADDING_PX = 5.0  # DeepLesion pads the RECIST extent by 5 px on every side


@dataclass(frozen=True)
class DLInfoRow:
    """One row (one lesion) of DL_info.csv, every column parsed.

    Pixel coordinates are those of the PNG slice (x = column, y = row), as DeepLesion writes them.
    """

    file_name: str
    patient_index: int
    study_index: int
    series_id: int
    key_slice_index: int
    measurement_coordinates_px: tuple[float, ...]  # long axis x1,y1,x2,y2 then short axis x3,y3,x4,y4
    box_xyxy_px: tuple[float, float, float, float]
    lesion_diameters_px: tuple[float, float]  # long, short
    normalized_location_xyz: tuple[float, float, float]
    coarse_lesion_type: int
    possibly_noisy: bool
    slice_range: tuple[int, int]  # first and last PNG slice number, inclusive
    spacing_mm: tuple[float, float, float]  # sx, sy (in-plane), slice interval
    image_size_px: tuple[int, int]
    dicom_window_hu: tuple[float, float]
    patient_gender: str
    patient_age: float
    split: int  # 1 train, 2 val, 3 test
    line_number: int = 0

    @property
    def series_folder(self) -> str:
        return f"{self.patient_index:06d}_{self.study_index:02d}_{self.series_id:02d}"

    @property
    def split_name(self) -> str:
        return SPLIT_NAMES[self.split]

    def to_csv_fields(self) -> list[str]:
        """The 18 column values as DeepLesion writes them."""
        return [
            self.file_name,
            str(self.patient_index),
            str(self.study_index),
            str(self.series_id),
            str(self.key_slice_index),
            _join(self.measurement_coordinates_px),
            _join(self.box_xyxy_px),
            _join(self.lesion_diameters_px),
            _join(self.normalized_location_xyz),
            str(self.coarse_lesion_type),
            str(int(self.possibly_noisy)),
            _join(self.slice_range),
            _join(self.spacing_mm),
            _join(self.image_size_px),
            _join(self.dicom_window_hu),
            self.patient_gender,
            _num(self.patient_age),
            str(self.split),
        ]


def _num(value: float) -> str:
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if math.isnan(value):
        return "NaN"
    return f"{float(value):.6g}"


def _join(values) -> str:
    return ", ".join(_num(v) for v in values)


def sub_volume_key(series_folder: str, first_slice: int, last_slice: int) -> str:
    """``PPPPPP_SS_RR_AAA-BBB``, the name DeepLesion and the released annotations use."""
    return f"{series_folder}_{first_slice:03d}-{last_slice:03d}"


def parse_sub_volume_key(key: str) -> tuple[str, int, int]:
    """Split ``PPPPPP_SS_RR_AAA-BBB`` (an ``.annot`` suffix allowed) into folder, first, last."""
    key = key.removesuffix(".annot")
    try:
        folder, span = key.rsplit("_", 1)
        first, last = (int(part) for part in span.split("-"))
    except ValueError:
        raise DataError(None, f"'{key}' is not a sub-volume key of the form PPPPPP_SS_RR_AAA-BBB") from None
    return folder, first, last


class _RowParser:
    """Parses one CSV row, turning any problem into a DataError naming file, line and column."""

    def __init__(self, path: Path, line_number: int, record: dict[str, str]):
        self.path, self.line_number, self.record = path, line_number, record

    def fail(self, column: str, problem: str) -> DataError:
        return DataError(self.path, f"line {self.line_number}, column {column}: {problem}")

    def text(self, column: str) -> str:
        value = self.record.get(column)
        if value is None:
            raise self.fail(column, "missing value")
        return value.strip()

    def integer(self, column: str, allowed: set[int] | None = None) -> int:
        raw = self.text(column)
        try:
            value = int(float(raw))
            if float(raw) != value:
                raise ValueError
        except (ValueError, OverflowError):  # "inf" overflows int()
            raise self.fail(column, f"expected an integer, got '{raw}'") from None
        if allowed is not None and value not in allowed:
            raise self.fail(column, f"expected one of {sorted(allowed)}, got {value}")
        return value

    def integers(self, column: str, count: int) -> tuple[int, ...]:
        """``count`` comma-separated whole numbers (a slice range, an image size)."""
        values = self.numbers(column, count)
        if not all(v.is_integer() and abs(v) < 2**31 for v in values):
            raise self.fail(column, f"expected {count} integers, got '{self.text(column)}'")
        return tuple(int(v) for v in values)

    def numbers(self, column: str, count: int, allow_nan: bool = False) -> tuple[float, ...]:
        raw = self.text(column)
        try:
            values = tuple(float(part) for part in raw.split(","))
        except ValueError:
            raise self.fail(column, f"expected {count} comma-separated numbers, got '{raw}'") from None
        if len(values) != count:
            raise self.fail(column, f"expected {count} numbers, got {len(values)} in '{raw}'")
        if not allow_nan and not all(math.isfinite(v) for v in values):
            raise self.fail(column, f"non-finite number in '{raw}'")
        return values


def parse_dl_info_record(path: Path, line_number: int, record: dict[str, str]) -> DLInfoRow:
    """Parse and check one DL_info.csv record (a dict keyed by column name)."""
    p = _RowParser(path, line_number, record)
    patient, study, series = p.integer("Patient_index"), p.integer("Study_index"), p.integer("Series_ID")
    key_slice = p.integer("Key_slice_index")
    file_name = p.text("File_name")
    expected_name = f"{patient:06d}_{study:02d}_{series:02d}_{key_slice:03d}.png"
    if file_name != expected_name:
        raise p.fail("File_name", f"'{file_name}' disagrees with the index columns ('{expected_name}')")
    first, last = p.integers("Slice_range", 2)
    if not (1 <= first <= key_slice <= last):
        raise p.fail("Slice_range", f"key slice {key_slice} is not inside the range {first}-{last}")
    spacing = p.numbers("Spacing_mm_px_", 3, allow_nan=True)
    for name, value in zip(("x spacing", "y spacing"), spacing[:2]):
        if not math.isfinite(value) or value <= 0:
            raise p.fail("Spacing_mm_px_", f"invalid {name} {value} mm; it must be a positive number")
    if not (math.isnan(spacing[2]) or spacing[2] > 0):
        raise p.fail("Spacing_mm_px_", f"invalid slice interval {spacing[2]} mm; must be positive or NaN")
    width, height = p.integers("Image_size", 2)
    if width <= 0 or height <= 0:
        raise p.fail("Image_size", f"invalid image size {width} x {height}")
    box = p.numbers("Bounding_boxes", 4)
    x1, y1, x2, y2 = box
    if not (x1 < x2 and y1 < y2):
        raise p.fail("Bounding_boxes", f"degenerate box {box}: need x1 < x2 and y1 < y2")
    pad = BOX_PADDING_PX
    if x1 < -pad or y1 < -pad or x2 > width - 1 + pad or y2 > height - 1 + pad:
        raise p.fail("Bounding_boxes", f"box {box} lies outside the {width} x {height} image")
    age_raw = p.text("Patient_age")
    try:
        age = float(age_raw) if age_raw else math.nan
    except ValueError:
        raise p.fail("Patient_age", f"expected a number, got '{age_raw}'") from None
    return DLInfoRow(
        file_name=file_name,
        patient_index=patient,
        study_index=study,
        series_id=series,
        key_slice_index=key_slice,
        measurement_coordinates_px=p.numbers("Measurement_coordinates", 8),
        box_xyxy_px=box,  # type: ignore[arg-type]
        lesion_diameters_px=p.numbers("Lesion_diameters_Pixel_", 2),  # type: ignore[arg-type]
        normalized_location_xyz=p.numbers("Normalized_lesion_location", 3),  # type: ignore[arg-type]
        coarse_lesion_type=p.integer("Coarse_lesion_type", set(LESION_TYPES)),
        possibly_noisy=bool(p.integer("Possibly_noisy", {0, 1})),
        slice_range=(first, last),
        spacing_mm=spacing,  # type: ignore[arg-type]
        image_size_px=(width, height),
        dicom_window_hu=p.numbers("DICOM_windows", 2),  # type: ignore[arg-type]
        patient_gender=p.text("Patient_gender"),
        patient_age=age,
        split=p.integer("Train_Val_Test", set(SPLIT_NAMES)),
        line_number=line_number,
    )


def read_dl_info(path: str | Path) -> list[DLInfoRow]:
    """Read every row of a DL_info.csv; any malformed row raises DataError naming its line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "DL_info.csv not found")
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = reader.fieldnames or []
            missing = [c for c in DL_INFO_COLUMNS if c not in header]
            if missing:
                raise DataError(path, f"missing columns {missing}; expected the 18 DL_info.csv columns")
            rows = []
            for record in reader:
                line = reader.line_num
                if None in record or any(v is None for v in record.values()):
                    raise DataError(path, f"line {line}: expected {len(header)} fields")
                rows.append(parse_dl_info_record(path, line, record))
    except UnicodeDecodeError:
        raise DataError(path, "not a text CSV file") from None
    except csv.Error as exc:
        raise DataError(path, f"malformed CSV ({exc})") from None
    return rows


def write_dl_info(path: str | Path, rows: list[DLInfoRow]) -> None:
    """Write rows as DL_info.csv (the 18 standard columns in the standard order), atomically."""
    from lesion_harvester.storage.atomic import atomic_write

    with atomic_write(path, "w") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(DL_INFO_COLUMNS)
        for row in rows:
            writer.writerow(row.to_csv_fields())


@dataclass(frozen=True)
class SubVolume:
    """Where a DeepLesion sub-volume lies on disk and which DL_info rows belong to it."""

    key: str
    folder: Path
    first_slice: int
    last_slice: int
    spacing_zyx_mm: tuple[float, float, float]
    image_size_px: tuple[int, int]  # width, height
    split: int
    rows: tuple[DLInfoRow, ...]

    @property
    def slice_numbers(self) -> range:
        return range(self.first_slice, self.last_slice + 1)

    @property
    def num_slices(self) -> int:
        return self.last_slice - self.first_slice + 1


def group_sub_volumes(rows: list[DLInfoRow], images_dir: Path, source: Path) -> dict[str, SubVolume]:
    """Merge the slice ranges of each series into sub-volumes (overlapping or touching ranges join)."""
    by_series: dict[str, list[DLInfoRow]] = defaultdict(list)
    for row in rows:
        by_series[row.series_folder].append(row)
    sub_volumes: dict[str, SubVolume] = {}
    for folder, series_rows in sorted(by_series.items()):
        series_rows.sort(key=lambda r: r.slice_range)
        groups: list[list[DLInfoRow]] = []
        for row in series_rows:
            if groups and row.slice_range[0] <= max(r.slice_range[1] for r in groups[-1]) + 1:
                groups[-1].append(row)
            else:
                groups.append([row])
        for group in groups:
            first = min(r.slice_range[0] for r in group)
            last = max(r.slice_range[1] for r in group)
            sx, sy, sz = group[0].spacing_mm
            for other in group[1:]:
                if not np.allclose(other.spacing_mm[:2], (sx, sy), rtol=1e-4):
                    raise DataError(
                        source,
                        f"lines {group[0].line_number} and {other.line_number}: rows of series {folder} "
                        f"disagree on the pixel spacing ({group[0].spacing_mm} vs {other.spacing_mm})",
                    )
            key = sub_volume_key(folder, first, last)
            sub_volumes[key] = SubVolume(
                key=key,
                folder=images_dir / folder,
                first_slice=first,
                last_slice=last,
                spacing_zyx_mm=(sz, sy, sx),
                image_size_px=group[0].image_size_px,
                split=group[0].split,
                rows=tuple(sorted(group, key=lambda r: r.line_number)),
            )
    return sub_volumes


VolumeSize = tuple[int, tuple[int, int]]  # (number of slices, (width, height) in pixels)


def sub_volume_sizes(dl_info: str | Path) -> dict[str, VolumeSize]:
    """The size of every sub-volume a DL_info.csv describes, without reading any image."""
    dl_info = Path(dl_info)
    sub_volumes = group_sub_volumes(read_dl_info(dl_info), dl_info.parent / "Images_png", dl_info)
    return {key: (sv.num_slices, sv.image_size_px) for key, sv in sub_volumes.items()}


class DeepLesionDataset:
    """A DeepLesion-layout folder: ``ROOT/Images_png/`` and ``ROOT/DL_info.csv``.

    Args:
        root: the dataset folder.
        dl_info: path of DL_info.csv (default ``ROOT/DL_info.csv``).
        drop_noisy: drop rows flagged ``Possibly_noisy`` from the RECIST marks (they still
            define sub-volumes), as the authors did.
    """

    def __init__(self, root: str | Path, dl_info: str | Path | None = None, drop_noisy: bool = True):
        self.root = Path(root)
        self.images_dir = self.root / "Images_png"
        if not self.images_dir.is_dir():
            raise DataError(
                self.root, "no Images_png folder; expected the DeepLesion layout Images_png/PPPPPP_SS_RR/NNN.png"
            )
        self.dl_info_path = Path(dl_info) if dl_info is not None else self.root / "DL_info.csv"
        self.rows = read_dl_info(self.dl_info_path)
        if not self.rows:  # every command would do nothing and say it succeeded
            raise DataError(self.dl_info_path, "no volumes: the file has its header but no rows (one row per "
                                               "lesion, and a sub-volume is known by its rows)")
        self.drop_noisy = drop_noisy
        self.sub_volumes = group_sub_volumes(self.rows, self.images_dir, self.dl_info_path)

    def keys(self, split: str | int | None = None) -> list[str]:
        """Sub-volume keys, optionally of one official split (1/2/3 or train/val/test)."""
        if split is None:
            return list(self.sub_volumes)
        code = split if isinstance(split, int) else {v: k for k, v in SPLIT_NAMES.items()}.get(split)
        if code not in SPLIT_NAMES:
            raise DataError(self.dl_info_path, f"unknown split '{split}'; expected train, val or test")
        return [k for k, sv in self.sub_volumes.items() if sv.split == code]

    def load(self, key: str) -> Volume:
        """Read a sub-volume's PNG slices into a Volume (int16 HU)."""
        key = key.removesuffix(".annot")
        if key not in self.sub_volumes:
            raise DataError(self.dl_info_path, f"no sub-volume '{key}' in DL_info.csv")
        sv = self.sub_volumes[key]
        if not sv.folder.is_dir():
            raise DataError(sv.folder, f"series folder of sub-volume {key} is missing")
        missing = [n for n in sv.slice_numbers if not (sv.folder / f"{n:03d}.png").is_file()]
        if missing:
            raise DataError(
                sv.folder,
                f"missing slices {_ranges(missing)} inside the range {sv.first_slice}-{sv.last_slice} of {key}",
            )
        slices = [read_png_hu(sv.folder / f"{n:03d}.png") for n in sv.slice_numbers]
        width, height = sv.image_size_px
        for n, image in zip(sv.slice_numbers, slices):
            if image.shape != (height, width):
                raise DataError(
                    sv.folder / f"{n:03d}.png",
                    f"slice is {image.shape[1]} x {image.shape[0]} px but DL_info.csv says {width} x {height}",
                )
        if math.isnan(sv.spacing_zyx_mm[0]):
            log.warning("%s: unknown slice interval; 2.5D context will repeat the target slice", key)
        return Volume(
            volume_id=key,
            hu_zyx=np.stack(slices),
            spacing_zyx_mm=sv.spacing_zyx_mm,
            slice_numbers=tuple(sv.slice_numbers),
            source=str(sv.folder),
        )

    def marks(self, keys: list[str] | None = None) -> dict[str, list[RecistMark]]:
        """RECIST marks per sub-volume key (every key present, possibly with an empty list)."""
        wanted = self.sub_volumes if keys is None else {k.removesuffix(".annot"): None for k in keys}
        result: dict[str, list[RecistMark]] = {k: [] for k in wanted}
        for key, sv in self.sub_volumes.items():
            if key not in result:
                continue
            for row in sv.rows:
                if row.possibly_noisy and self.drop_noisy:
                    continue
                result[key].append(recist_mark(key, row, sv.first_slice))
        return result


def recist_mark(volume_key: str, row: DLInfoRow, first_slice: int) -> RecistMark:
    """The RECIST mark of one DL_info row, on slice ``Key_slice_index - first_slice`` of its sub-volume."""
    coords = row.measurement_coordinates_px
    return RecistMark(
        volume_key=volume_key,
        z_index=row.key_slice_index - first_slice,
        long_axis_px=tuple(coords[:4]),  # type: ignore[arg-type]
        short_axis_px=tuple(coords[4:]),  # type: ignore[arg-type]
        box_xyxy_px=tuple(row.box_xyxy_px),  # type: ignore[arg-type]
    )


def _ranges(numbers: list[int]) -> str:
    """[3, 4, 5, 9] -> '3-5, 9'."""
    parts, start, prev = [], numbers[0], numbers[0]
    for n in numbers[1:] + [None]:  # type: ignore[list-item]
        if n is not None and n == prev + 1:
            prev = n
            continue
        parts.append(f"{start}-{prev}" if prev != start else f"{start}")
        if n is not None:
            start = prev = n
    return ", ".join(parts)
