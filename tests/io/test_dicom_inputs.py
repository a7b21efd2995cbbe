"""DICOM series as a PACS folder holds them: named by series, padding read as air, Git-LFS placeholders named."""

import shutil

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian

from lesion_harvester.cli.main import main
from lesion_harvester.errors import DataError
from lesion_harvester.geometry.frames import RAS_TO_LPS
from lesion_harvester.io.dicom import SeriesHeader, read_dicom, series_names
from lesion_harvester.io.loader import load_volume, open_volumes
from tests.conftest import shared_path
from tests.dicom_series import write_dicom_series

REAL_SERIES = ("real_ct", "totalsegmentator", "example_ct_dicom")
LFS_POINTER = ("version https://git-lfs.github.com/spec/v1\n"
               "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 160302\n")


def test_series_names_follow_one_rule():
    names = series_names([SeriesHeader("1.2.3", "CT Body 3.0", None), SeriesHeader("1.2.4", "Chest/Abd 1.25mm", 3),
                          SeriesHeader("1.2.5", "", 7), SeriesHeader("1.2.6", "", None),
                          SeriesHeader("", "", None), SeriesHeader("1.2.7", "Chest/Abd 1.25mm", 3),
                          SeriesHeader("1.2.8", "../../etc", 2)], "export")
    assert names == ["CT_Body_3.0", "Chest_Abd_1.25mm_3", "series_7", "1.2.6", "export", "Chest_Abd_1.25mm_3_2",
                     "etc_2"]


def _twin(tmp_path, name, description, number):
    """example_ct_sm (real CT) written as a DICOM series with this description and number."""
    image = nib.load(shared_path("real_ct", "totalsegmentator", "example_ct_sm.nii.gz"))
    write_dicom_series(tmp_path / name, np.asarray(image.dataobj).astype(np.int16), RAS_TO_LPS @ image.affine,
                       tags={"SeriesDescription": description, "SeriesNumber": number})


def test_a_folder_of_series_is_named_by_series_whether_it_holds_one_or_many(tmp_path):
    real = shared_path(*REAL_SERIES)
    shutil.copytree(real, tmp_path / "export" / "real")
    _twin(tmp_path / "export", "abdomen", "Abdomen 3mm", 2)
    source = open_volumes(tmp_path / "export")
    # the real series has no patient ID, so it sorts first; it has no SeriesNumber either
    assert source.keys == ["CT_Body_3.0", "Abdomen_3mm_2"]
    assert open_volumes(tmp_path / "export" / "abdomen").keys == ["Abdomen_3mm_2"]  # alone: the same name
    assert open_volumes(real).keys == ["CT_Body_3.0"]
    volume = source.load("Abdomen_3mm_2")
    ds = pydicom.dcmread(next((tmp_path / "export" / "abdomen").iterdir()))
    dicom = volume.extra["dicom"]
    assert (dicom["patient_id"], dicom["study_uid"], dicom["series_uid"]) == ("TEST0001", ds.StudyInstanceUID,
                                                                           ds.SeriesInstanceUID)
    assert (dicom["series_description"], dicom["series_number"]) == ("Abdomen 3mm", 2)


def _real_series_with_padding(tmp_path, name, padding, tags=None, slices=3):
    """The first ``slices`` slices of the real JPEG 2000 series, decoded and rewritten uncompressed as
    signed 16-bit (intercept -1024), with the stored value ``padding`` (an int, a (lo, hi) range drawn
    from, or None: the real values) outside a circular field of view. Returns (folder, the field of view
    as a (rows, columns) mask)."""
    files = sorted(shared_path(*REAL_SERIES).iterdir())[:slices]
    folder = tmp_path / name
    folder.mkdir()
    rows, columns = np.mgrid[:512, :512]
    fov = (rows - 255.5) ** 2 + (columns - 255.5) ** 2 < 240.0 ** 2
    rng = np.random.default_rng(0)
    for path in files:
        ds = pydicom.dcmread(path)
        stored = ds.pixel_array.astype(np.int32)  # HU + 1024
        if padding is not None:
            outside = padding if isinstance(padding, int) else rng.integers(padding[0], padding[1] + 1, stored.shape)
            stored = np.where(fov, stored, outside)
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.PixelRepresentation, ds.BitsStored, ds.HighBit = 1, 16, 15
        ds.PixelData = stored.astype(np.int16).tobytes()
        ds["PixelData"].VR, ds["PixelData"].is_undefined_length = "OW", False
        for keyword, value in (tags or {}).items():  # "US or SS" tags: the pixels' sign
            ds.add_new(pydicom.datadict.tag_for_keyword(keyword), "SS", value)
        ds.save_as(folder / path.name, enforce_file_format=True)
    return folder, fov


@pytest.mark.parametrize("padding, tags", [
    (-2000, {"PixelPaddingValue": -2000}),  # -3024 HU, with the tag
    (-2000, {}),  # -3024 HU, no tag: below the modality's range
    (-100, {"PixelPaddingValue": -100}),  # -1124 HU: padding only because the tag says so
    ((-120, -100), {"PixelPaddingValue": -100, "PixelPaddingRangeLimit": -120}),  # a range of padding values
])
def test_padding_of_a_real_series_is_read_as_air(tmp_path, padding, tags):
    plain_folder, fov = _real_series_with_padding(tmp_path, "plain", None)
    (plain,) = read_dicom(plain_folder)
    folder, _ = _real_series_with_padding(tmp_path, "padded", padding, tags)
    (volume,) = read_dicom(folder)
    assert np.array_equal(volume.hu_zyx[:, fov], plain.hu_zyx[:, fov])  # the real anatomy, untouched
    assert np.all(volume.hu_zyx[:, ~fov] == -1000) and volume.hu_zyx.min() >= -1024
    assert volume.extra["dicom"]["padding_voxels"] == 3 * int((~fov).sum())
    assert plain.extra["dicom"]["padding_voxels"] == 0


def test_a_padding_range_leaves_the_values_outside_it(tmp_path):
    """Stored -130 (HU -1154) is not in the range -120..-100 that the tags name, so it stays."""
    folder, fov = _real_series_with_padding(tmp_path, "band", -130,
                                            {"PixelPaddingValue": -100, "PixelPaddingRangeLimit": -120}, slices=2)
    (volume,) = read_dicom(folder)
    assert np.all(volume.hu_zyx[:, ~fov] == -1154) and volume.extra["dicom"]["padding_voxels"] == 0


def test_a_synthetic_padded_series_and_a_padding_value_read_with_the_other_sign(tmp_path):
    from lesion_harvester.geometry.frames import to_input_grid

    hu = np.full((24, 20, 4), 35, dtype=np.int16)
    hu[:3], hu[:, :2] = -1124, -1124  # outside the field of view: stored -100, padding only by its tag
    hu[10, 10, 1], hu[12, 10, 1] = -1024, -3024  # air inside stays air; -3024, below CT's range, is padding
    write_dicom_series(tmp_path / "ss", hu, np.diag([0.7, 0.7, 2.0, 1.0]), intercept=-1024,
                       tags={"PixelPaddingValue": -100})
    files = write_dicom_series(tmp_path / "us", hu, np.diag([0.7, 0.7, 2.0, 1.0]), intercept=-1024)
    for path in files:  # some exports write the tag as US: 65436 is -100 in the pixels' 16 signed bits
        ds = pydicom.dcmread(path)
        ds.add_new(0x00280120, "US", 65436)
        ds.save_as(path)
    padding = (hu == -1124) | (hu == -3024)
    for name in ("ss", "us"):
        volume = load_volume(tmp_path / name)
        on_input_grid = to_input_grid(volume.hu_zyx, volume.geometry.array_to_input)
        assert np.array_equal(on_input_grid, np.where(padding, -1000, hu)), name
        assert volume.extra["dicom"]["padding_voxels"] == int(padding.sum())


def test_inspect_reports_the_padding_and_the_series(tmp_path, capsys):
    import json

    folder, fov = _real_series_with_padding(tmp_path, "padded", -2000, slices=2)
    assert main(["inspect", str(folder)]) == 0
    (summary,) = json.loads(capsys.readouterr().out)["volumes"]
    assert summary["hu_min"] >= -1024  # not -3024
    assert summary["dicom"]["padding_voxels_read_as_air"] == 2 * int((~fov).sum())
    assert summary["dicom"]["series_description"] == "CT Body 3.0"
    assert summary["orientation"] == {"input_axes_ijk": "LPS", "array_axes_xyz": "LPI", "slice_plane": "axial",
                                      "oblique_deg": 0.0}


def test_git_lfs_pointers_are_named_as_such(tmp_path, capsys):
    (tmp_path / "scan.nii.gz").write_text(LFS_POINTER)
    (tmp_path / "series").mkdir()
    for n in range(3):
        (tmp_path / "series" / f"CT.{n}").write_text(LFS_POINTER)
    with pytest.raises(DataError, match="scan.nii.gz: a Git-LFS pointer .* not the image .*git lfs pull"):
        load_volume(tmp_path / "scan.nii.gz")
    with pytest.raises(DataError, match="3 of its 3 files are Git-LFS pointers.*git lfs pull"):
        open_volumes(tmp_path / "series")
    for path in ("scan.nii.gz", "series"):
        assert main(["inspect", str(tmp_path / path)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Git-LFS pointer" in err and path in err, err
