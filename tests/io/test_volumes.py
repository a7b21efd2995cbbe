"""NIfTI and DICOM readers on the real files and on hand-made ones with known orientation."""

import math

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless, generate_uid

from lesion_harvester.errors import DataError
from lesion_harvester.io.dicom import read_dicom
from lesion_harvester.io.loader import open_volumes
from lesion_harvester.io.nifti import read_nifti
from lesion_harvester.structures import Volume
from tests.conftest import shared_path


def test_real_nifti_files():
    ct = read_nifti(shared_path("real_ct", "totalsegmentator", "example_ct.nii.gz"))
    assert ct.shape == (112, 101, 122) and ct.spacing_zyx_mm == (3.0, 3.0, 3.0)
    assert ct.hu_zyx.min() == -1207 and ct.hu_zyx.max() == 3382
    # the spine (bone) lies in the posterior (lower) half of the axial image
    bone_rows = np.nonzero(ct.hu_zyx[56] > 300)[0]
    assert np.median(bone_rows) > ct.shape[1] / 2
    small = read_nifti(shared_path("real_ct", "totalsegmentator", "example_ct_sm.nii.gz"))
    # example_ct_sm holds the voxels of example_ct[:, :, 82:112] (RAS k = 82..111 -> our z reversed)
    assert np.array_equal(small.hu_zyx, ct.hu_zyx[: 112 - 82])


def test_real_dicom_series_jpeg2000():
    (volume,) = read_dicom(shared_path("real_ct", "totalsegmentator", "example_ct_dicom"))
    assert volume.shape == (20, 512, 512)
    assert volume.spacing_zyx_mm == pytest.approx((2.0, 0.9765625, 0.9765625))
    assert volume.hu_zyx.min() == -1024 and volume.hu_zyx.max() == 1839


def test_real_single_dicom_slice():
    (volume,) = read_dicom(shared_path("real_ct", "pydicom", "CT_small.dcm"))
    assert volume.shape == (1, 128, 128)
    assert volume.spacing_zyx_mm[1] == pytest.approx(0.661468, abs=1e-5)
    assert volume.hu_zyx.min() == -896 and volume.hu_zyx.max() == 1167


def _marker_volume():
    data = np.zeros((6, 5, 4), dtype=np.int16)  # (i, j, k) voxel axes
    data[1, 2, 3] = 100  # one marker voxel
    return data


@pytest.mark.parametrize("flips", [(1, 1, 1), (-1, 1, 1), (1, -1, -1), (-1, -1, 1)])
def test_nifti_orientations_land_in_one_frame(tmp_path, flips):
    """The same anatomy stored with flipped axes gives the same (z, y, x) array."""
    data = _marker_volume()
    spacing = np.array([0.8, 0.9, 2.5])
    ref_affine = np.diag(list(spacing) + [1.0])  # RAS+
    affine = ref_affine.copy()
    for axis, sign in enumerate(flips):
        if sign < 0:
            affine[axis, axis] *= -1
            affine[axis, 3] = spacing[axis] * (data.shape[axis] - 1)
    stored = data[tuple(slice(None, None, s) for s in flips)]
    nib.save(nib.Nifti1Image(stored, affine), tmp_path / "v.nii.gz")
    nib.save(nib.Nifti1Image(data, ref_affine), tmp_path / "ref.nii")
    got, ref = read_nifti(tmp_path / "v.nii.gz"), read_nifti(tmp_path / "ref.nii")
    assert np.array_equal(got.hu_zyx, ref.hu_zyx)
    assert got.spacing_zyx_mm == pytest.approx((2.5, 0.9, 0.8))
    # RAS voxel (1, 2, 3): x runs right->left so i=1 -> column 6-1-1=4, y anterior->posterior so j=2 -> row 5-1-2=2,
    # z superior->inferior so k=3 -> z 4-1-3=0
    assert ref.hu_zyx[0, 2, 4] == 100


def test_nifti_bad_spacing_and_shape(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), None), tmp_path / "zero.nii")
    raw = bytearray((tmp_path / "zero.nii").read_bytes())
    raw[88:92] = np.float32(0.0).tobytes()  # pixdim[3], the slice spacing, as a broken file has it
    (tmp_path / "zero.nii").write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"zero\.nii: invalid voxel spacing"):
        read_nifti(tmp_path / "zero.nii")
    nib.save(nib.Nifti1Image(np.zeros((4, 4), np.int16), np.eye(4)), tmp_path / "flat.nii")
    with pytest.raises(DataError, match="expected a 3D volume"):
        read_nifti(tmp_path / "flat.nii")
    (tmp_path / "junk.nii.gz").write_bytes(b"junk")
    with pytest.raises(DataError, match="not a readable NIfTI"):
        read_nifti(tmp_path / "junk.nii.gz")


def _write_dicom_slice(path, z_mm, pixels, syntax=ExplicitVRLittleEndian, series=None, instance=1):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = pydicom.uid.CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.Modality = "CT"
    ds.SeriesInstanceUID = series or "1.2.3"
    ds.InstanceNumber = instance
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [0, 0, z_mm]
    ds.PixelSpacing = [0.7, 0.7]
    ds.SliceThickness = 2.5
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation, ds.SamplesPerPixel, ds.PhotometricInterpretation = 0, 1, "MONOCHROME2"
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    if syntax != ExplicitVRLittleEndian:
        from pydicom.encaps import encapsulate

        ds.PixelData = encapsulate([b"\xff" * 64])  # not a real JPEG-LS stream
        ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)


def test_dicom_series_sorted_superior_to_inferior(tmp_path):
    # slice k holds value 1024 + 10 * k at patient z = -2.5 * k (k = 0 is the most superior)
    order = [3, 0, 2, 1]
    for name, k in enumerate(order):
        _write_dicom_slice(tmp_path / f"img{name}", -2.5 * k, np.full((4, 5), 1024 + 10 * k), instance=10 - k)
    (volume,) = read_dicom(tmp_path)
    assert volume.spacing_zyx_mm == pytest.approx((2.5, 0.7, 0.7))
    assert [int(volume.hu_zyx[z, 0, 0]) for z in range(4)] == [0, 10, 20, 30]


def test_unsupported_dicom_transfer_syntax(tmp_path):
    _write_dicom_slice(tmp_path / "a.dcm", 0.0, np.zeros((4, 4)), syntax=JPEGLSLossless)
    with pytest.raises(DataError) as err:
        read_dicom(tmp_path / "a.dcm")
    assert "a.dcm" in str(err.value) and "unsupported DICOM" in str(err.value)


@pytest.mark.parametrize("syntax", ["JPEGLosslessSV1", "JPEGLSLossless", "RLELossless", "JPEG2000Lossless"])
def test_compressed_dicom_series_read_as_the_uncompressed_one(tmp_path, syntax):
    """JPEG Lossless (GDCM), JPEG-LS (pyjpegls), RLE (pydicom) and JPEG 2000 (openjpeg) decode exactly."""
    import gdcm

    from tests.dicom_series import write_dicom_series

    hu = np.random.default_rng(0).integers(-1000, 1500, size=(64, 48, 3)).astype(np.int16)
    paths = write_dicom_series(tmp_path / "raw", hu, np.diag([0.7, 0.7, 2.0, 1.0]))
    (tmp_path / "packed").mkdir()
    for path in paths:
        out = tmp_path / "packed" / path.name
        if syntax == "JPEGLosslessSV1":  # pydicom cannot encode it; GDCM can
            reader = gdcm.ImageReader()
            reader.SetFileName(str(path))
            assert reader.Read()
            change = gdcm.ImageChangeTransferSyntax()
            change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
            change.SetInput(reader.GetImage())
            assert change.Change()
            writer = gdcm.ImageWriter()
            writer.SetFileName(str(out))
            writer.SetFile(reader.GetFile())
            writer.SetImage(change.GetOutput())
            assert writer.Write()
        else:
            ds = pydicom.dcmread(path)
            ds.compress(getattr(pydicom.uid, syntax))
            ds.save_as(out, enforce_file_format=True)
    assert pydicom.dcmread(out).file_meta.TransferSyntaxUID == getattr(pydicom.uid, syntax)
    (packed,), (raw,) = read_dicom(tmp_path / "packed"), read_dicom(tmp_path / "raw")
    assert np.array_equal(packed.hu_zyx, raw.hu_zyx)


def test_no_dicom_in_folder(tmp_path):
    (tmp_path / "readme.txt").write_text("hello")
    with pytest.raises(DataError, match="no DICOM files"):
        open_volumes(tmp_path)


def test_volume_checks():
    with pytest.raises(DataError, match="empty volume"):
        Volume("v", np.zeros((0, 4, 4), np.int16), (1.0, 1.0, 1.0))
    with pytest.raises(DataError, match="invalid row spacing nan"):
        Volume("v", np.zeros((2, 4, 4), np.int16), (1.0, math.nan, 1.0))
    with pytest.raises(DataError, match="invalid slice interval 0"):
        Volume("v", np.zeros((2, 4, 4), np.int16), (0.0, 1.0, 1.0))
    unknown = Volume("v", np.zeros((2, 4, 4), np.int16), (math.nan, 1.0, 1.0))
    assert unknown.summary()["spacing_mm"][0] is None


def test_single_slice_volume_is_read_but_refused_for_3d_work():
    (volume,) = read_dicom(shared_path("real_ct", "pydicom", "CT_small.dcm"))
    with pytest.raises(DataError, match=r"CT_small\.dcm: single-slice volume; 3D stacking needs at least 2"):
        volume.require_slices(2, "3D stacking")


def test_missing_path():
    with pytest.raises(DataError, match="not found"):
        open_volumes("/nonexistent/volume.nii.gz")


def test_a_dicom_folder_reads_each_file_twice_at_most_and_series_lazily(tmp_path, monkeypatch):
    """Headers once (to group series), the whole file once (when its series is loaded), and no
    series' pixels before it is asked for."""
    from collections import Counter

    from lesion_harvester.io import dicom
    from tests.dicom_series import write_dicom_series

    for name in ("a", "b"):
        write_dicom_series(tmp_path / "export" / name, np.zeros((8, 8, 4), np.int16), np.diag([0.7, 0.7, 2.0, 1.0]))
    reads: Counter = Counter()
    real = pydicom.dcmread

    def counting(path, *args, **kwargs):
        reads[(str(path), "header" if kwargs.get("stop_before_pixels") else "full")] += 1
        return real(path, *args, **kwargs)

    monkeypatch.setattr(dicom.pydicom, "dcmread", counting)
    source = open_volumes(tmp_path / "export")
    assert len(source.keys) == 2 and not any(kind == "full" for _, kind in reads)
    volume = source.load(source.keys[0])
    assert volume.shape == (4, 8, 8)
    assert sum(1 for _, kind in reads if kind == "full") == 4  # one series read, the other not yet
    assert max(reads.values()) == 1


def test_a_mixed_export_keeps_the_ct_series_and_says_which_were_skipped(tmp_path, caplog):
    from tests.dicom_series import write_dicom_series

    grid = np.zeros((8, 8, 3), np.int16)
    write_dicom_series(tmp_path / "export" / "ct", grid, np.diag([0.7, 0.7, 2.0, 1.0]))
    for name, change in (("pet", {"Modality": "PT"}), ("scout", {"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]})):
        for path in write_dicom_series(tmp_path / "export" / name, grid, np.diag([0.7, 0.7, 2.0, 1.0])):
            ds = pydicom.dcmread(path)
            for key, value in change.items():
                setattr(ds, key, value)
            ds.SeriesDescription = name
            ds.save_as(path)
    with caplog.at_level("WARNING"):
        source = open_volumes(tmp_path / "export")
    assert source.keys == ["series_1"]  # the one CT series, named by its number (it has no description)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2
    assert any("'pet', 3 files" in w and "modality PT, not CT" in w for w in warnings)
    assert any("'scout', 3 files" in w and "a localizer" in w for w in warnings)
