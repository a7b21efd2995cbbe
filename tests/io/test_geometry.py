"""A volume keeps where its voxels lie: in the input file's grid and in world millimetres.

NIfTI (affine, RAS), DICOM (ImagePositionPatient / ImageOrientationPatient / PixelSpacing, LPS)
and DeepLesion PNG (spacing only, origin unknown): round trips array <-> input <-> world are exact,
and the same anatomy stored either way lands at the same world positions.
"""

import nibabel as nib
import numpy as np
import pytest

from lesion_harvester.errors import DataError
from lesion_harvester.geometry.frames import RAS_TO_LPS, transform_box
from lesion_harvester.io.dicom import read_dicom
from lesion_harvester.io.nifti import read_nifti
from lesion_harvester.structures import SourceGeometry, Volume
from tests.conftest import shared_path
from tests.dicom_series import write_dicom_series

SHAPE_IJK = (7, 6, 5)
MARKER_IJK = (1, 4, 3)


def _grid() -> np.ndarray:
    hu = np.full(SHAPE_IJK, -1000, dtype=np.int16)
    hu[MARKER_IJK] = 500
    return hu


def _affine_ras(rotation_deg: float = 0.0) -> np.ndarray:
    """Flipped i and k, 0.7 x 0.7 x 2.5 mm, an origin off zero; optionally rotated about the z axis."""
    affine = np.diag([-0.7, 0.7, -2.5, 1.0])
    affine[:3, 3] = [40.0, -12.5, 101.0]
    angle = np.deg2rad(rotation_deg)
    rotation = np.eye(4)
    rotation[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    return rotation @ affine


def _marker_xyz(volume: Volume) -> np.ndarray:
    z, y, x = np.argwhere(volume.hu_zyx == 500)[0]
    return np.array([x, y, z], dtype=np.float64)


@pytest.mark.parametrize("rotation_deg", [0.0, 20.0])
def test_nifti_round_trips(tmp_path, rotation_deg):
    nib.save(nib.Nifti1Image(_grid(), _affine_ras(rotation_deg)), tmp_path / "v.nii.gz")
    affine = nib.load(tmp_path / "v.nii.gz").affine  # as stored (float32 in the header)
    volume = read_nifti(tmp_path / "v.nii.gz")
    geometry = volume.geometry
    assert geometry.input_shape_ijk == SHAPE_IJK and geometry.native_frame == "RAS" and geometry.origin_known
    assert volume.spacing_zyx_mm == pytest.approx((2.5, 0.7, 0.7))
    marker = _marker_xyz(volume)
    # array -> input is exact integer arithmetic, and back
    assert geometry.points_array_to_input(marker).tolist() == list(MARKER_IJK)
    assert geometry.points_input_to_array(np.array(MARKER_IJK)).tolist() == marker.tolist()
    # array -> world is the file's affine at the marker's voxel, in RAS and in LPS, and back
    world_ras = affine[:3, :3] @ MARKER_IJK + affine[:3, 3]
    assert geometry.points_array_to_world(marker, "RAS") == pytest.approx(world_ras, abs=1e-9)
    assert geometry.points_array_to_world(marker, "LPS") == pytest.approx(world_ras * [-1, -1, 1], abs=1e-9)
    points = np.random.default_rng(0).uniform(-3, 9, size=(20, 3))
    for frame in ("RAS", "LPS"):
        back = geometry.points_world_to_array(geometry.points_array_to_world(points, frame), frame)
        assert back == pytest.approx(points, abs=1e-9)


def test_box_round_trip_through_the_input_grid(tmp_path):
    nib.save(nib.Nifti1Image(_grid(), _affine_ras()), tmp_path / "v.nii")
    geometry = read_nifti(tmp_path / "v.nii").geometry
    lo, hi = np.array([1.0, 2.0, 0.0]), np.array([4.0, 5.0, 3.0])  # inclusive voxel box (x, y, z)
    in_lo, in_hi = geometry.box_array_to_input(lo, hi)
    # the input box holds exactly the mapped voxels
    voxels = np.array([[x, y, z] for x in range(1, 5) for y in range(2, 6) for z in range(0, 4)], float)
    mapped = geometry.points_array_to_input(voxels)
    assert mapped.min(axis=0).tolist() == in_lo.tolist() and mapped.max(axis=0).tolist() == in_hi.tolist()
    back_lo, back_hi = transform_box(np.linalg.inv(geometry.array_to_input), in_lo, in_hi)
    assert back_lo.tolist() == lo.tolist() and back_hi.tolist() == hi.tolist()
    # the world box of an axis-aligned acquisition holds the corner voxels' centres exactly
    w_lo, w_hi = geometry.box_array_to_world(lo, hi, "LPS")
    corners = geometry.points_array_to_world(np.array([lo, hi]), "LPS")
    assert w_lo == pytest.approx(corners.min(axis=0)) and w_hi == pytest.approx(corners.max(axis=0))


def _sheared_affine_ras() -> np.ndarray:
    """Non-square pixels (0.6 x 0.8 mm) and slices stepping sideways as well as up (a gantry tilt)."""
    affine = np.diag([0.6, 0.8, 2.0, 1.0])
    affine[1, 2], affine[:3, 3] = 0.3, [5.0, 6.0, 7.0]
    return affine


@pytest.mark.parametrize("affine_ras", [_affine_ras(), _sheared_affine_ras()], ids=["flipped", "sheared"])
def test_dicom_written_from_nifti_lands_at_the_same_world_positions(tmp_path, affine_ras):
    nib.save(nib.Nifti1Image(_grid(), affine_ras), tmp_path / "v.nii.gz")
    write_dicom_series(tmp_path / "series", _grid(), RAS_TO_LPS @ affine_ras)
    from_nifti = read_nifti(tmp_path / "v.nii.gz")
    (from_dicom,) = read_dicom(tmp_path / "series")
    assert from_dicom.geometry.native_frame == "LPS"
    assert np.array_equal(from_nifti.hu_zyx, from_dicom.hu_zyx)
    for frame in ("RAS", "LPS"):
        assert from_dicom.geometry.array_to_world(frame) == pytest.approx(from_nifti.geometry.array_to_world(frame),
                                                                          abs=1e-5)
    assert len(from_dicom.extra["dicom"]["sop_instance_uids"]) == SHAPE_IJK[2]


def test_real_dicom_series_matches_its_nifti_conversion():
    """The TotalSegmentator DICOM series and its label map converted to NIfTI (LAS) by another tool:
    same voxel -> world mapping, and the liver label lies on liver-like HU."""
    (ct,) = read_dicom(shared_path("real_ct", "totalsegmentator", "example_ct_dicom"))
    labels = read_nifti(shared_path("real_ct", "totalsegmentator", "example_seg_dicom.nii.gz"))
    assert ct.shape == labels.shape
    assert ct.geometry.array_to_world("RAS") == pytest.approx(labels.geometry.array_to_world("RAS"), abs=1e-3)
    liver = ct.hu_zyx[labels.hu_zyx == 5]
    assert liver.size > 1000 and 30 < np.median(liver) < 200
    assert np.median(ct.hu_zyx[labels.hu_zyx == 0]) < -200  # mostly air and fat outside the organs


def test_volume_without_affine_says_its_origin_is_unknown():
    volume = Volume("v", np.zeros((4, 8, 6), np.int16), (2.0, 0.8, 0.7))
    geometry = volume.geometry
    assert not geometry.origin_known and geometry.native_frame == "LPS"
    assert geometry.input_shape_ijk == (6, 8, 4)
    # x toward the patient's left, y posterior, z inferior: LPS +x, +y, -z
    step = geometry.points_array_to_world(np.array([[1.0, 1.0, 1.0]]), "LPS")[0]
    assert step.tolist() == pytest.approx([0.7, 0.8, -2.0])


def test_bad_geometry_is_a_clear_error(tmp_path):
    image = nib.Nifti1Image(_grid(), None)
    image.header.set_sform(np.diag([0.7, 0.7, 0.0, 1.0]), code=1)  # slices stacked onto one plane
    image.header.set_qform(None, code=0)
    nib.save(image, tmp_path / "singular.nii")
    with pytest.raises(DataError, match=r"singular\.nii: .*(singular|invalid)"):
        read_nifti(tmp_path / "singular.nii")
    sagittal = np.array([[0, 0, 3.0, 0], [0.7, 0, 0, 0], [0, 0.7, 0, 0], [0, 0, 0, 1]])  # slices along R-L
    nib.save(nib.Nifti1Image(_grid(), sagittal), tmp_path / "sagittal.nii")
    with pytest.raises(DataError, match=r"sagittal\.nii: axial pixels of .* not an axial acquisition"):
        read_nifti(tmp_path / "sagittal.nii")
    write_dicom_series(tmp_path / "gap", _grid(), RAS_TO_LPS @ _affine_ras(), skip=(2,))
    with pytest.raises(DataError, match=r"gap: uneven slice positions .* missing slices"):
        read_dicom(tmp_path / "gap")


def test_a_geometry_must_hold_the_array():
    geometry = SourceGeometry((5, 5, 5), np.eye(4), np.eye(4))
    with pytest.raises(DataError, match="does not hold"):
        Volume("v", np.zeros((4, 5, 5), np.int16), (1.0, 1.0, 1.0), geometry=geometry)


def test_a_deeplesion_sub_volume_has_its_spacing_and_no_origin(tiny_dataset):
    from lesion_harvester.io.deeplesion import DeepLesionDataset

    dataset = DeepLesionDataset(tiny_dataset)
    key = dataset.keys()[0]
    volume = dataset.load(key)
    geometry = volume.geometry
    assert not geometry.origin_known and geometry.native_frame == "LPS"
    dz, dy, dx = dataset.sub_volumes[key].spacing_zyx_mm
    corner = np.array([[volume.shape[2] - 1.0, volume.shape[1] - 1.0, volume.shape[0] - 1.0]])
    far = geometry.points_array_to_world(corner, "LPS")[0]  # from the first voxel at the origin
    assert far == pytest.approx([dx * corner[0, 0], dy * corner[0, 1], -dz * corner[0, 2]])
    assert geometry.points_world_to_array(far[None], "LPS")[0] == pytest.approx(corner[0])
    # and the findings of such a volume say that their world positions are relative
    from lesion_harvester.detect.findings import findings_document
    from lesion_harvester.structures import Findings

    assert findings_document(Findings(volume, ()))["world_origin_known"] is False
