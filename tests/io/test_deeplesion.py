import csv
import math
import shutil

import numpy as np
import pytest

from lesion_harvester.errors import DataError
from lesion_harvester.io.annotations import read_slice_boxes
from lesion_harvester.io.deeplesion import (
    DL_INFO_COLUMNS,
    DeepLesionDataset,
    parse_sub_volume_key,
    read_dl_info,
    sub_volume_key,
    write_dl_info,
)
from lesion_harvester.io.png16 import write_png_hu
from tests.conftest import shared_path


def test_real_excerpt_parses_every_column():
    rows = read_dl_info(shared_path("deeplesion", "DL_info_excerpt_158rows.csv"))
    assert len(rows) == 158
    assert sum(r.split == 1 for r in rows) == 105
    assert sum(r.split == 2 for r in rows) == 18
    assert sum(r.split == 3 for r in rows) == 35
    first = rows[0]
    assert first.file_name == "000089_01_01_037.png"
    assert (first.patient_index, first.study_index, first.series_id, first.key_slice_index) == (89, 1, 1, 37)
    assert first.measurement_coordinates_px == (154.273, 176.808, 143.903, 209.029, 160.939, 200.511, 137.977, 191.252)
    assert first.box_xyxy_px == (132.977, 171.808, 165.939, 214.029)
    assert first.lesion_diameters_px == (33.8477, 24.7578)
    assert first.normalized_location_xyz == (0.282373, 0.333694, 0.546692)
    assert first.coarse_lesion_type == -1 and not first.possibly_noisy
    assert first.slice_range == (31, 43)
    assert first.spacing_mm == (0.859375, 0.859375, 5.0)
    assert first.image_size_px == (512, 512) and first.dicom_window_hu == (-175.0, 275.0)
    assert first.patient_gender == "F" and first.patient_age == 71
    # the box is the RECIST extent padded by 5 px
    xs, ys = first.measurement_coordinates_px[0::2], first.measurement_coordinates_px[1::2]
    assert first.box_xyxy_px == pytest.approx((min(xs) - 5, min(ys) - 5, max(xs) + 5, max(ys) + 5), abs=1e-3)


def test_real_excerpt_matches_released_recist_boxes():
    """For val/test rows, key + z = Key_slice_index - AAA + box equal the authors' RECIST-Box files."""
    rows = read_dl_info(shared_path("deeplesion", "DL_info_excerpt_158rows.csv"))
    released = {}
    for name in ("RECIST-Box-Test.pkl", "RECIST-Box-Valid.pkl"):
        released.update(read_slice_boxes(shared_path("deeplesion_annotation", name)))
    checked = 0
    for row in rows:
        if row.split == 1:
            continue
        key = sub_volume_key(row.series_folder, *row.slice_range)
        z = row.key_slice_index - row.slice_range[0]
        boxes = [b.box_xyxy_px for b in released[key] if b.z_index == z]
        assert any(np.allclose(b, row.box_xyxy_px, atol=1e-3) for b in boxes), key
        checked += 1
    assert checked == 53


def test_write_then_read_round_trip(tmp_path):
    rows = read_dl_info(shared_path("deeplesion", "DL_info_excerpt_158rows.csv"))
    write_dl_info(tmp_path / "DL_info.csv", rows)
    again = read_dl_info(tmp_path / "DL_info.csv")
    assert [dict(vars(a), line_number=0) for a in again] == [dict(vars(b), line_number=0) for b in rows]
    with open(tmp_path / "DL_info.csv") as handle:
        assert tuple(next(csv.reader(handle))) == DL_INFO_COLUMNS


def test_sub_volume_key_format():
    assert sub_volume_key("000090_01_01", 85, 145) == "000090_01_01_085-145"
    assert parse_sub_volume_key("002982_04_02_200-260.annot") == ("002982_04_02", 200, 260)
    with pytest.raises(DataError):
        parse_sub_volume_key("not-a-key")


def _excerpt_rows(tmp_path, edit):
    """Copy the real excerpt with one field of the first data row changed."""
    src = shared_path("deeplesion", "DL_info_excerpt_158rows.csv")
    with open(src, newline="") as handle:
        records = list(csv.reader(handle))
    edit(records)
    path = tmp_path / "DL_info.csv"
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows(records)
    return path


@pytest.mark.parametrize(
    "column, value, message",
    [
        ("Spacing_mm_px_", "nan, nan, 5", "invalid x spacing"),
        ("Spacing_mm_px_", "0, 0, 5", "invalid x spacing"),
        ("Spacing_mm_px_", "0.8, 0.8, 0", "invalid slice interval"),
        ("Bounding_boxes", "600, 10, 700, 40", "outside the 512 x 512 image"),
        ("Bounding_boxes", "50, 10, 40, 40", "degenerate box"),
        ("Bounding_boxes", "1, 2, 3", "expected 4 numbers"),
        ("Slice_range", "40, 43", "not inside the range"),
        ("Key_slice_index", "abc", "expected an integer"),
        ("Train_Val_Test", "7", "expected one of"),
        ("File_name", "000001_01_01_001.png", "disagrees with the index columns"),
    ],
)
def test_malformed_rows_name_file_line_and_column(tmp_path, column, value, message):
    def edit(records):
        records[1][records[0].index(column)] = value

    path = _excerpt_rows(tmp_path, edit)
    with pytest.raises(DataError) as err:
        read_dl_info(path)
    text = str(err.value)
    assert str(path) in text and "line 2" in text and column in text and message in text


def test_short_row_and_missing_column(tmp_path):
    path = _excerpt_rows(tmp_path, lambda r: r[3].__delitem__(slice(5, None)))
    with pytest.raises(DataError, match="line 4: expected 18 fields"):
        read_dl_info(path)
    path = _excerpt_rows(tmp_path, lambda r: [row.pop(6) for row in r])
    with pytest.raises(DataError, match="missing columns"):
        read_dl_info(path)


def test_nan_slice_interval_is_accepted_as_unknown(tmp_path):
    path = _excerpt_rows(tmp_path, lambda r: r[1].__setitem__(12, "0.8, 0.8, nan"))
    row = read_dl_info(path)[0]
    assert math.isnan(row.spacing_mm[2])


def test_dataset_loads_synthetic_volume_with_marks(tiny_dataset):
    ds = DeepLesionDataset(tiny_dataset)
    key = ds.keys()[0]
    volume = ds.load(key)
    sv = ds.sub_volumes[key]
    assert volume.volume_id == key
    assert volume.num_slices == sv.num_slices == len(volume.slice_numbers)
    assert volume.hu_zyx.dtype == np.int16 and volume.hu_zyx.min() >= -1024
    assert volume.spacing_zyx_mm[1] == sv.rows[0].spacing_mm[1]
    marks = ds.marks([key])[key]
    assert marks and all(0 <= m.z_index < volume.num_slices for m in marks)


def test_missing_slice_inside_range_is_reported(tiny_dataset, tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(tiny_dataset, copy)
    ds = DeepLesionDataset(copy)
    key = ds.keys()[0]
    sv = ds.sub_volumes[key]
    (sv.folder / f"{sv.first_slice + 2:03d}.png").unlink()
    with pytest.raises(DataError) as err:
        ds.load(key)
    assert str(sv.folder) in str(err.value) and f"missing slices {sv.first_slice + 2}" in str(err.value)


def test_touching_ranges_merge_into_one_sub_volume(tmp_path):
    rows = read_dl_info(shared_path("deeplesion", "DL_info_excerpt_158rows.csv"))
    # 000100_01_01 has rows with ranges 29-41 (key 35) and 47-63: separate; 47-63 rows share one range
    images = tmp_path / "Images_png" / "000100_01_01"
    images.mkdir(parents=True)
    keep = [r for r in rows if r.series_folder == "000100_01_01"]
    write_dl_info(tmp_path / "DL_info.csv", keep)
    for n in range(1, 70):
        write_png_hu(images / f"{n:03d}.png", np.zeros((512, 512)))
    ds = DeepLesionDataset(tmp_path)
    ranges = sorted((sv.first_slice, sv.last_slice) for sv in ds.sub_volumes.values())
    merged = []
    for a, b in sorted(r.slice_range for r in keep):
        if merged and a <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(b, merged[-1][1]))
        else:
            merged.append((a, b))
    assert ranges == merged
    total_rows = sum(len(sv.rows) for sv in ds.sub_volumes.values())
    assert total_rows == len(keep)
