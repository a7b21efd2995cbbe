"""Hostile-but-fair volume inputs: NIfTI headers that lie, complex or singular NIfTI, and DICOM
series whose geometry would put slices at the wrong z. Each ends in one line naming the file (exit 2
from the CLI, no traceback, nothing printed on stdout), or, where asked for, in a volume that keeps
every slice's true position."""

from __future__ import annotations

import gzip
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from lesion_harvester.cli.main import main
from lesion_harvester.errors import ConfigError, DataError
from lesion_harvester.io.dicom import read_dicom
from lesion_harvester.io.hu import MAX_VOXELS_ENV
from lesion_harvester.io.nifti import read_nifti
from tests.dicom_series import write_dicom_series

AFFINE_LPS = np.diag([0.7, 0.7, 2.0, 1.0])  # 0.7 mm pixels, 2 mm slices at z = 0, 2, 4, ...


def _inspect_fails(capsys, path: Path, *parts: str, named: Path | None = None) -> str:
    """``inspect PATH`` exits 2 with one line on stderr naming ``named`` (default ``path``) and holding
    ``parts``; no traceback, nothing on stdout."""
    assert main(["inspect", str(path)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert str(named or path) in lines[0] and "Traceback" not in captured.err and captured.out == ""
    for part in parts:
        assert part in lines[0], lines[0]
    return lines[0]


# NIfTI ---------------------------------------------------------------------------------------------

def _lying_nifti(path: Path, shape: tuple[int, ...], dtype, data_bytes: int = 16) -> Path:
    """A NIfTI file whose header declares ``shape`` voxels of ``dtype`` followed by ``data_bytes`` bytes."""
    header = nib.Nifti1Header()
    header.set_data_dtype(dtype)
    header.set_data_shape(shape)
    header.set_zooms((1.0,) * len(shape))
    header.set_qform(np.eye(4), code=1)
    header["vox_offset"] = 352
    raw = header.binaryblock + b"\0" * 4 + b"\0" * data_bytes
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)
    return path


@pytest.mark.parametrize("name", ["bomb.nii", "bomb.nii.gz"])
@pytest.mark.parametrize("dtype", [np.int16, np.float64])
def test_a_header_claiming_a_billion_voxels_fails_before_allocating_them(tmp_path, capsys, name, dtype):
    path = _lying_nifti(tmp_path / name, (1000, 1000, 1000), dtype)
    assert path.stat().st_size < 400
    tracemalloc.start()
    try:
        with pytest.raises(DataError) as err:
            read_nifti(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 200 * 2**20, f"peak {peak / 2**20:.0f} MiB"
    assert str(err.value).startswith(f"{path}: truncated or damaged: the header declares 1000 x 1000 x 1000 voxels")
    _inspect_fails(capsys, path, "truncated or damaged", "bytes")


def test_the_voxel_ceiling_is_named_with_the_way_to_raise_it(tmp_path, capsys, monkeypatch):
    path = tmp_path / "big.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 8), np.int16), np.eye(4)), path)
    assert read_nifti(path).shape == (8, 16, 16)
    monkeypatch.setenv(MAX_VOXELS_ENV, "1000")
    line = _inspect_fails(capsys, path, "16 x 16 x 8 = 2,048 voxels", "limit of 1,000", MAX_VOXELS_ENV)
    assert "set LESION_HARVESTER_MAX_VOXELS to a larger number" in line
    monkeypatch.setenv(MAX_VOXELS_ENV, "lots")
    with pytest.raises(ConfigError, match="LESION_HARVESTER_MAX_VOXELS='lots': expected a positive number"):
        read_nifti(path)
    monkeypatch.setenv(MAX_VOXELS_ENV, "1e4")
    assert read_nifti(path).shape == (8, 16, 16)


def test_a_header_beyond_the_ceiling_is_refused_without_reading_the_file(tmp_path):
    path = _lying_nifti(tmp_path / "huge.nii", (4096, 4096, 4096), np.int16)  # 2^36 voxels
    with pytest.raises(DataError, match=r"huge\.nii: the header declares a grid of 4096 x 4096 x 4096 = "
                                        r"68,719,476,736 voxels, more than the limit of 2,147,483,648"):
        read_nifti(path)


def test_a_truncated_gzip_stream_is_named(tmp_path, capsys):
    path = tmp_path / "cut.nii.gz"
    noise = np.random.default_rng(0).integers(-1000, 1000, size=(16, 16, 8)).astype(np.int16)
    nib.save(nib.Nifti1Image(noise, np.eye(4)), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    _inspect_fails(capsys, path, "corrupt or truncated gzip data")


def test_complex_voxels_are_refused(tmp_path, capsys):
    path = tmp_path / "complex.nii"
    nib.save(nib.Nifti1Image(np.full((4, 4, 4), 1 + 2j, np.complex64), np.eye(4)), path)
    with pytest.raises(DataError, match=r"complex\.nii: complex voxels \(complex64\); CT is real-valued"):
        read_nifti(path)
    _inspect_fails(capsys, path, "complex voxels")


def _nifti_with_sform(path: Path, sform: np.ndarray) -> Path:
    image = nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), None)
    image.header.set_qform(None, code=0)
    image.header["sform_code"] = 1
    for row, name in enumerate(("srow_x", "srow_y", "srow_z")):
        image.header[name] = sform[row]
    image.header.set_zooms((1.0, 1.0, 1.0))
    nib.save(nib.Nifti1Image(image.dataobj, None, header=image.header), path)
    assert np.array_equal(nib.load(path).affine[:3], np.asarray(sform, np.float32)[:3])  # stored as given
    return path


@pytest.mark.parametrize("sform", [np.zeros((4, 4)), np.diag([1e5, 1e5, 1e-12, 1.0]),
                                   np.array([[1, 0, 0, 0], [0, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 1.0]])],
                         ids=["zero", "relatively-flat", "rank-2"])
def test_a_zero_or_singular_affine_is_named(tmp_path, capsys, sform):
    path = _nifti_with_sform(tmp_path / "flat.nii", sform)
    with pytest.raises(DataError, match=r"flat\.nii: singular voxel-to-world affine"):
        read_nifti(path)
    _inspect_fails(capsys, path, "singular voxel-to-world affine")


# DICOM ---------------------------------------------------------------------------------------------

def _series(folder: Path, num_slices: int = 6, skip: tuple[int, ...] = ()) -> list[Path]:
    """A 16 x 16 series, slice k filled with 10 * k HU at z = 2 k mm; files in k order (shuffle off)."""
    hu = np.broadcast_to(np.arange(num_slices, dtype=np.int16) * 10, (16, 16, num_slices)).copy()
    return write_dicom_series(folder, hu, AFFINE_LPS, skip=skip, shuffle_seed=None)


def _edit(path: Path, **changes) -> None:
    ds = pydicom.dcmread(path)
    for key, value in changes.items():
        if value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    ds.save_as(path)


def test_a_missing_slice_is_an_error_naming_the_series_and_the_positions(tmp_path, capsys):
    paths = _series(tmp_path / "gap", skip=(2, 3))
    uid = str(pydicom.dcmread(paths[0]).SeriesInstanceUID)
    line = _inspect_fails(capsys, tmp_path / "gap", uid, "missing slices (2 at the median interval of 2.000 mm)",
                          "LESION_HARVESTER_DICOM_GAPS=nan")
    assert "between -2.000 and -8.000 mm" in line or "between 2.000 and 8.000 mm" in line, line


def test_an_explicit_opt_in_keeps_the_true_z_with_nan_slices(tmp_path, monkeypatch, caplog):
    _series(tmp_path / "gap", skip=(2, 3))
    (volume,) = read_dicom(tmp_path / "gap", allow_gaps=True)
    assert volume.hu_zyx.dtype == np.float32 and volume.shape == (6, 16, 16)
    assert volume.spacing_zyx_mm == pytest.approx((2.0, 0.7, 0.7))
    values = volume.hu_zyx[:, 0, 0]
    order = slice(None) if values[0] == 0 else slice(None, None, -1)  # z runs head to feet
    np.testing.assert_array_equal(values[order], [0, 10, np.nan, np.nan, 40, 50])
    # every slice keeps its world position: array slice z of slice k lies at LPS z = 2 k
    k_of_z = range(6)[order]
    for z, k in enumerate(k_of_z):
        world = volume.geometry.points_array_to_world(np.array([[0.0, 0.0, z]]), "LPS")[0]
        assert world[2] == pytest.approx(2.0 * k)
    files = volume.extra["dicom"]["files"]
    assert [f is None for f in files][order] == [False, False, True, True, False, False]
    assert "missing slice(s)" in caplog.text
    # the same through the environment (how the CLI asks for it)
    monkeypatch.setenv("LESION_HARVESTER_DICOM_GAPS", "nan")
    (again,) = read_dicom(tmp_path / "gap")
    np.testing.assert_array_equal(again.hu_zyx, volume.hu_zyx)
    monkeypatch.setenv("LESION_HARVESTER_DICOM_GAPS", "fill")
    with pytest.raises(ConfigError, match="LESION_HARVESTER_DICOM_GAPS='fill': expected 'nan'"):
        read_dicom(tmp_path / "gap")


def test_a_gap_that_is_not_a_whole_number_of_slices_stays_an_error(tmp_path):
    paths = _series(tmp_path / "odd")
    _edit(paths[3], ImagePositionPatient=[0.0, 0.0, 7.0])  # 6 -> 7 mm: steps 2, 2, 3, 1, 2
    with pytest.raises(DataError, match=r"odd: uneven slice positions .* where the median interval is 2\.000 mm"):
        read_dicom(tmp_path / "odd", allow_gaps=True)


def test_a_slice_without_pixel_data_is_named(tmp_path, capsys):
    paths = _series(tmp_path / "nopix")
    _edit(paths[2], PixelData=None)
    _inspect_fails(capsys, tmp_path / "nopix", "no pixel data", named=paths[2])


@pytest.mark.parametrize("keep_bytes", [-100, -511, 900], ids=["in-pixels", "pixel-header", "in-header"])
def test_a_truncated_file_is_named_as_truncated(tmp_path, capsys, keep_bytes):
    paths = _series(tmp_path / "cut")
    raw = paths[2].read_bytes()
    paths[2].write_bytes(raw[:keep_bytes])
    line = _inspect_fails(capsys, tmp_path / "cut", "truncated", named=paths[2])
    assert "no pixel data" not in line


def test_a_slice_with_another_orientation_is_named(tmp_path, capsys):
    paths = _series(tmp_path / "mixed")
    _edit(paths[4], ImageOrientationPatient=[0.0, 1.0, 0.0, 1.0, 0.0, 0.0])
    _inspect_fails(capsys, tmp_path / "mixed", "ImageOrientationPatient [0.0, 1.0, 0.0, 1.0, 0.0, 0.0] differs",
                   "5 of the series' 6 slices", named=paths[4])


@pytest.mark.parametrize("orientation", [[0.0] * 6, [1.0, 0.0, 0.0, 1.0, 0.0, 0.0]], ids=["zero", "parallel"])
def test_a_zero_or_singular_orientation_is_named(tmp_path, capsys, orientation):
    paths = _series(tmp_path / "flat", num_slices=3)
    for path in paths:
        _edit(path, ImageOrientationPatient=orientation)
    _inspect_fails(capsys, tmp_path / "flat", "invalid ImageOrientationPatient", "orthogonal unit vectors",
                   named=paths[0])


def test_a_slice_without_position_in_a_positioned_series_is_named(tmp_path, capsys):
    paths = _series(tmp_path / "nopos")
    _edit(paths[3], ImagePositionPatient=None)
    _inspect_fails(capsys, tmp_path / "nopos", "no ImagePositionPatient", named=paths[3])


def test_a_series_beyond_the_voxel_ceiling_is_refused_before_decoding(tmp_path, monkeypatch):
    _series(tmp_path / "big")
    monkeypatch.setenv(MAX_VOXELS_ENV, str(16 * 16 * 5))
    with pytest.raises(DataError, match=r"big: series .* 16 x 16 x 6 = 1,536 voxels, more than the limit of 1,280"):
        read_dicom(tmp_path / "big")


def test_a_dicom_seg_of_a_series_with_gaps_refers_to_the_slices_present(tmp_path):
    from lesion_harvester.io.dicom import write_dicom_seg

    _series(tmp_path / "gap", skip=(2,))
    (volume,) = read_dicom(tmp_path / "gap", allow_gaps=True)
    files = volume.extra["dicom"]["files"]
    labels = np.zeros(volume.geometry.input_shape_ijk, np.uint16)
    labels[4:8, 4:8, :] = 1
    write_dicom_seg(tmp_path / "seg.dcm", labels, files, [0.9], "test")
    seg = pydicom.dcmread(tmp_path / "seg.dcm")
    assert int(seg.NumberOfFrames) == sum(f is not None for f in files) == 5


def test_missing_slices_reach_the_network_as_air_and_are_counted():
    """A series read with gaps allowed has NaN slices: `inspect` counts them, preparation fills them with air."""
    from lesion_harvester.config import load_preset
    from lesion_harvester.geometry.preprocess import AIR_HU, normalize_hu
    from lesion_harvester.preprocessing import prepare_volume
    from lesion_harvester.structures import Volume

    hu = np.full((4, 32, 32), -1000.0, np.float32)
    hu[:, 8:24, 8:24] = 40.0
    hu[1] = np.nan
    volume = Volume("gap", hu, (2.0, 1.0, 1.0))
    summary = volume.summary()
    assert summary["missing_slices"] == 1 and summary["hu_min"] == -1000.0
    prepared = prepare_volume(volume, load_preset("tiny").preprocess)
    assert np.isfinite(prepared.image).all()
    air = float(normalize_hu(np.float32(AIR_HU)))
    assert np.allclose(prepared.image[1], air, atol=0.1)
