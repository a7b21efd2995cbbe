"""The prepared-volume cache never hides a changed or damaged source, and never trusts a damaged entry:
a source whose size or modification time changed is prepared again (and so reported if it is now
corrupt), a same-size same-time change is found when asked (verify), and a damaged .json or .npy is
prepared again with a warning naming it. The cheap path (nothing changed) reads no source file."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from lesion_harvester.config import load_preset
from lesion_harvester.dataset import prepared_cache
from lesion_harvester.dataset.prepared_cache import PreparedCache
from lesion_harvester.errors import DataError
from lesion_harvester.io import deeplesion
from lesion_harvester.io.deeplesion import DLInfoRow, write_dl_info
from lesion_harvester.io.loader import open_volumes
from lesion_harvester.io.png16 import write_png_hu

SERIES = "000001_01_01"
KEY = f"{SERIES}_001-004"


def _slice(n: int, level: int = 0) -> np.ndarray:
    """A 16 x 16 HU slice: air around a soft-tissue square whose value depends on n and level."""
    hu = np.full((16, 16), -1000, np.int16)
    hu[3:13, 3:13] = 40 + 10 * n + level
    return hu


def _write_slice(folder: Path, n: int, level: int = 0) -> Path:
    path = folder / f"{n:03d}.png"
    write_png_hu(path, _slice(n, level), compress_level=0)  # stored deflate: the size depends on the shape only
    return path


def _dataset(root: Path) -> Path:
    """A DeepLesion-layout folder: one sub-volume of 4 slices of 16 x 16 px, one lesion."""
    folder = root / "Images_png" / SERIES
    folder.mkdir(parents=True)
    for n in range(1, 5):
        _write_slice(folder, n)
    row = DLInfoRow(
        file_name=f"{SERIES}_002.png", patient_index=1, study_index=1, series_id=1, key_slice_index=2,
        measurement_coordinates_px=(4.0, 8.0, 12.0, 8.0, 8.0, 5.0, 8.0, 11.0), box_xyxy_px=(3.0, 4.0, 13.0, 12.0),
        lesion_diameters_px=(8.0, 6.0), normalized_location_xyz=(0.5, 0.5, 0.5), coarse_lesion_type=-1,
        possibly_noisy=False, slice_range=(1, 4), spacing_mm=(0.8, 0.8, 2.0), image_size_px=(16, 16),
        dicom_window_hu=(-160.0, 240.0), patient_gender="F", patient_age=50.0, split=1)
    write_dl_info(root / "DL_info.csv", [row])
    return root


@pytest.fixture()
def data(tmp_path) -> Path:
    return _dataset(tmp_path / "data")


def _cache(tmp_path, verify: bool = False) -> PreparedCache:
    return PreparedCache(tmp_path / "cache", load_preset("tiny").preprocess, verify=verify)


def _get(cache: PreparedCache, data: Path, key: str | None = KEY) -> np.ndarray:
    """The prepared image of ``key`` of ``data`` (None: its only volume, e.g. a DICOM series, which is
    named by its series description and number)."""
    source = open_volumes(data)
    if key is None:
        (key,) = source.keys
    return np.array(cache.get(source, key).image, dtype=np.float32)


def _entry(cache: PreparedCache, key: str = KEY) -> tuple[Path, Path]:
    return cache.dir / f"{key}.npy", cache.dir / f"{key}.json"


def _no_temporary_files(cache: PreparedCache) -> None:
    assert sorted(p.name for p in cache.dir.iterdir() if p.name.startswith(".")) == []


def test_a_truncated_source_png_is_reported_not_served_from_the_cache(data, tmp_path):
    cache = _cache(tmp_path)
    _get(cache, data)
    png = data / "Images_png" / SERIES / "003.png"
    png.write_bytes(png.read_bytes()[:60])
    with pytest.raises(DataError, match=rf"{png}: corrupt or unreadable PNG"):
        _get(cache, data)
    _no_temporary_files(cache)


def test_the_cheap_path_reads_no_source_file(data, tmp_path, monkeypatch):
    cache = _cache(tmp_path)
    first = _get(cache, data)

    def forbidden(*_args, **_kwargs):
        raise AssertionError("the cheap path read a source file")

    monkeypatch.setattr(prepared_cache, "_sha256", forbidden)
    monkeypatch.setattr(deeplesion, "read_png_hu", forbidden)
    np.testing.assert_array_equal(_get(cache, data), first)


def test_a_changed_source_is_prepared_again(data, tmp_path):
    cache = _cache(tmp_path)
    before = _get(cache, data)
    png = _write_slice(data / "Images_png" / SERIES, 2, level=500)
    stat = png.stat()
    os.utime(png, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # whatever the clock's resolution
    after = _get(cache, data)
    assert not np.array_equal(before, after)
    np.testing.assert_array_equal(after, _get(_cache(tmp_path / "fresh"), data))


def test_a_same_size_same_time_change_is_found_when_verifying(data, tmp_path):
    cache = _cache(tmp_path)
    before = _get(cache, data)
    png = data / "Images_png" / SERIES / "002.png"
    stat = png.stat()
    _write_slice(png.parent, 2, level=500)
    os.utime(png, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert png.stat().st_size == stat.st_size
    np.testing.assert_array_equal(_get(cache, data), before)  # the cheap path trusts size and time
    verified = _get(_cache(tmp_path, verify=True), data)
    assert not np.array_equal(verified, before)
    np.testing.assert_array_equal(verified, _get(_cache(tmp_path / "fresh"), data))


def _garbage_json(npy: Path, meta: Path) -> None:
    meta.write_text("{not json")


def _json_without_sources(npy: Path, meta: Path) -> None:
    record = json.loads(meta.read_text())
    del record["sources"]
    meta.write_text(json.dumps(record))


def _truncated_npy(npy: Path, meta: Path) -> None:
    npy.write_bytes(npy.read_bytes()[:-100])


def _float32_npy(npy: Path, meta: Path) -> None:
    np.save(npy, np.load(npy).astype(np.float32))


def _wrong_shape_npy_with_a_matching_record(npy: Path, meta: Path) -> None:
    np.save(npy, np.load(npy)[:2])
    record = json.loads(meta.read_text())
    stat = npy.stat()
    record["image"].update(size=stat.st_size, mtime_ns=stat.st_mtime_ns)  # only the shape tells
    meta.write_text(json.dumps(record))


def _missing_npy(npy: Path, meta: Path) -> None:
    npy.unlink()


@pytest.mark.parametrize("damage", [_garbage_json, _json_without_sources, _truncated_npy, _float32_npy,
                                    _wrong_shape_npy_with_a_matching_record, _missing_npy],
                         ids=lambda f: f.__name__.strip("_"))
def test_a_damaged_entry_is_prepared_again_with_a_warning_naming_it(data, tmp_path, caplog, damage):
    cache = _cache(tmp_path)
    before = _get(cache, data)
    npy, meta = _entry(cache)
    damage(npy, meta)
    with caplog.at_level(logging.WARNING, logger="lesion_harvester.dataset.prepared_cache"):
        np.testing.assert_array_equal(_get(cache, data), before)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    named = meta if "json" in damage.__name__ else npy
    assert len(warnings) == 1 and warnings[0].startswith(f"{named}: damaged"), warnings
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="lesion_harvester.dataset.prepared_cache"):
        np.testing.assert_array_equal(_get(cache, data), before)  # whole again: read back without a word
    assert caplog.records == []
    _no_temporary_files(cache)


def test_an_entry_of_the_old_format_is_prepared_again(data, tmp_path):
    cache = _cache(tmp_path)
    before = _get(cache, data)
    npy, meta = _entry(cache)
    record = json.loads(meta.read_text())
    old = {k: record[k] for k in ("crop_yx", "scale", "spacing_zyx_mm", "original_shape")}  # no sources
    meta.write_text(json.dumps(old))
    np.testing.assert_array_equal(_get(cache, data), before)
    assert json.loads(meta.read_text())["sources"]


def test_a_nifti_source_is_tracked_too(tmp_path):
    path = tmp_path / "scan.nii.gz"
    hu = np.full((16, 16, 3), -1000, np.int16)
    hu[4:12, 4:12] = 40
    nib.save(nib.Nifti1Image(hu, np.diag([0.8, 0.8, 2.0, 1.0])), path)
    cache = _cache(tmp_path)
    before = _get(cache, path, "scan")
    record = json.loads(_entry(cache, "scan")[1].read_text())
    assert [s["path"] for s in record["sources"]] == [str(path)]
    hu[4:12, 4:12] = 300
    nib.save(nib.Nifti1Image(hu, np.diag([0.8, 0.8, 2.0, 1.0])), path)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert not np.array_equal(_get(cache, path, "scan"), before)


def test_a_dicom_series_that_lost_a_slice_is_not_served_from_the_cache(tmp_path):
    from tests.dicom_series import write_dicom_series

    hu = np.full((16, 16, 5), -1000, np.int16)
    hu[4:12, 4:12] = 40
    paths = write_dicom_series(tmp_path / "series", hu, np.diag([0.8, 0.8, 2.0, 1.0]), shuffle_seed=None)
    cache = _cache(tmp_path)
    _get(cache, tmp_path / "series", None)
    paths[2].unlink()
    with pytest.raises(DataError, match="series: uneven slice positions .* missing slices"):
        _get(cache, tmp_path / "series", None)


def test_a_slice_added_to_a_dicom_series_is_not_missed(tmp_path):
    import pydicom

    from tests.dicom_series import write_dicom_series

    hu = np.full((16, 16, 5), -1000, np.int16)
    hu[4:12, 4:12] = 40
    affine = np.diag([0.8, 0.8, 2.0, 1.0])
    (first, *_rest) = write_dicom_series(tmp_path / "series", hu, affine, skip=(4,), shuffle_seed=None)
    cache = _cache(tmp_path)
    assert _get(cache, tmp_path / "series", None).shape[0] == 4
    (late,) = write_dicom_series(tmp_path / "late", hu, affine, skip=(0, 1, 2, 3), shuffle_seed=None)
    ds = pydicom.dcmread(late)
    ds.SeriesInstanceUID = pydicom.dcmread(first).SeriesInstanceUID  # the series' fifth slice, exported late
    ds.save_as(tmp_path / "series" / "slice0099")
    assert _get(cache, tmp_path / "series", None).shape[0] == 5


def test_a_cache_that_cannot_be_written_serves_the_volume_from_memory(data, tmp_path, monkeypatch, caplog):
    import contextlib

    @contextlib.contextmanager
    def full_disk(path, mode="wb"):
        raise OSError(28, "No space left on device")
        yield  # pragma: no cover

    expected = _get(_cache(tmp_path / "reference"), data)
    cache = _cache(tmp_path)
    monkeypatch.setattr(prepared_cache, "atomic_write", full_disk)
    with caplog.at_level(logging.WARNING, logger="lesion_harvester.dataset.prepared_cache"):
        np.testing.assert_array_equal(_get(cache, data), expected)
    assert "cannot write the prepared volume to the cache" in caplog.text
    assert list(cache.dir.iterdir()) == []
