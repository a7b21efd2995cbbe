"""``detect`` and the Python API: findings placed in the input's voxels and world mm, files users' tools open."""

import json

import nibabel as nib
import numpy as np
import pytest

from lesion_harvester import Detector, findings_document, load_volume
from lesion_harvester.cli.main import main
from lesion_harvester.detect.findings import label_map_ijk
from lesion_harvester.detect.run import write_scan
from lesion_harvester.geometry.frames import RAS_TO_LPS
from lesion_harvester.structures import Findings, Tracklet
from tests.conftest import shared_path
from tests.dicom_series import write_dicom_series

SHAPE_IJK = (40, 36, 12)


def _affine_ras() -> np.ndarray:
    """Flipped i and k, 0.7 x 0.7 x 2.5 mm, an origin off zero."""
    affine = np.diag([-0.7, 0.7, -2.5, 1.0])
    affine[:3, 3] = [40.0, -12.5, 101.0]
    return affine


def _lesion_scan(tmp_path):
    """A NIfTI file with a bright block at input voxels i 10-14, j 20-25, k 4-6."""
    hu = np.full(SHAPE_IJK, -50, dtype=np.int16)
    hu[10:15, 20:26, 4:7] = 120
    nib.save(nib.Nifti1Image(hu, _affine_ras()), tmp_path / "scan.nii.gz")
    return tmp_path / "scan.nii.gz", hu


def _findings_on_the_block(volume) -> Findings:
    """A finding whose per-slice boxes are exactly the block, found from the array (as a detector would)."""
    z, y, x = np.nonzero(volume.hu_zyx == 120)
    box = [x.min(), y.min(), x.max(), y.max()]
    pairs = [(int(k), [*box, 0.9]) for k in sorted(set(z.tolist()))]
    weak = Tracklet.single_slice(0, [0, 0, 3, 3], 0.4)
    return Findings(volume, (weak, Tracklet.from_pairs(pairs)))


def test_a_finding_leaves_in_input_voxels_and_world_mm(tmp_path):
    path, hu = _lesion_scan(tmp_path)
    volume = load_volume(path)
    findings = _findings_on_the_block(volume)
    assert [t.score for t in findings.tracklets] == [0.9, 0.4]  # by descending score
    document = findings_document(findings)
    assert document["world_frame"] == "RAS" and document["world_origin_known"]
    best = document["findings"][0]
    assert best["id"] == 1
    assert best["box_input_voxels"] == {"ijk_min": [10, 20, 4], "ijk_max": [14, 25, 6]}
    affine = nib.load(path).affine
    centre_ijk = np.array([12.0, 22.5, 5.0])
    assert best["centre_input_voxels"] == centre_ijk.tolist()
    assert best["centre_world_mm"] == pytest.approx(affine[:3, :3] @ centre_ijk + affine[:3, 3], abs=1e-3)
    assert best["long_axis_mm"] == pytest.approx(6 * 0.7) and best["short_axis_mm"] == pytest.approx(5 * 0.7)
    lps = findings_document(findings, "LPS")["findings"][0]["centre_world_mm"]
    assert lps == pytest.approx(np.array(best["centre_world_mm"]) * [-1, -1, 1], abs=1e-3)
    # the label map lies on the input grid: label 1 exactly on the block
    labels = label_map_ijk(findings)
    assert labels.shape == SHAPE_IJK
    assert np.array_equal(labels == 1, hu == 120)


def test_written_scan_opens_on_the_input_grid(tmp_path):
    path, hu = _lesion_scan(tmp_path)
    findings = _findings_on_the_block(load_volume(path))
    write_scan(findings, tmp_path / "out" / "scan")
    labels = nib.load(tmp_path / "out" / "scan" / "labels.nii.gz")
    assert labels.shape == hu.shape and np.allclose(labels.affine, nib.load(path).affine)
    assert np.array_equal(np.asarray(labels.dataobj) == 1, hu == 120)
    rows = (tmp_path / "out" / "scan" / "findings.csv").read_text().splitlines()
    assert rows[0].startswith("id,score,centre_world_x_mm") and len(rows) == 3
    assert (tmp_path / "out" / "scan" / "montage.png").stat().st_size > 1000
    with pytest.raises(Exception, match="already exists"):
        write_scan(findings, tmp_path / "out" / "scan")


def test_a_dicom_segmentation_refers_to_the_series_and_lies_where_the_label_map_does(tmp_path):
    import highdicom as hd

    _, hu = _lesion_scan(tmp_path)
    write_dicom_series(tmp_path / "series", hu, RAS_TO_LPS @ _affine_ras())
    volume = load_volume(tmp_path / "series")
    findings = _findings_on_the_block(volume)
    assert write_scan(findings, tmp_path / "out", dicom_seg=True) == ""
    seg = hd.seg.segread(tmp_path / "out" / "findings_seg.dcm")
    assert seg.number_of_segments == 2
    assert {uid for _, _, uid in seg.get_source_image_uids()} == set(volume.extra["dicom"]["sop_instance_uids"])
    seg_volume = seg.get_volume(combine_segments=True)  # (slices, rows, columns) with an LPS affine
    seg_world = {(int(v), *np.round(seg_volume.affine[:3, :3] @ p + seg_volume.affine[:3, 3], 3))
                 for p, v in zip(np.argwhere(seg_volume.array > 0), seg_volume.array[seg_volume.array > 0])}
    labels = label_map_ijk(findings)
    lps = RAS_TO_LPS @ volume.geometry.input_to_ras
    ours = {(int(labels[tuple(p)]), *np.round(lps[:3, :3] @ p + lps[:3, 3], 3)) for p in np.argwhere(labels > 0)}
    assert seg_world == ours
    # a NIfTI input has no series to refer to: the scan is written, without a SEG, and says so
    (tmp_path / "nifti").mkdir()
    path, _ = _lesion_scan(tmp_path / "nifti")
    note = write_scan(_findings_on_the_block(load_volume(path)), tmp_path / "out2", dicom_seg=True)
    assert "not a DICOM series" in note and not (tmp_path / "out2" / "findings_seg.dcm").exists()


def test_the_same_ct_as_nifti_and_as_dicom_gives_findings_at_the_same_world_positions(tiny_checkpoint, tmp_path):
    """example_ct_sm written as a DICOM series by the test: the detector's findings agree in world mm."""
    nifti = shared_path("real_ct", "totalsegmentator", "example_ct_sm.nii.gz")
    image = nib.load(nifti)
    write_dicom_series(tmp_path / "series", np.asarray(image.dataobj).astype(np.int16), RAS_TO_LPS @ image.affine)
    detector = Detector.from_checkpoint(tiny_checkpoint, device="cpu", min_score=0.0)
    from_nifti, from_dicom = detector(load_volume(nifti)), detector(load_volume(tmp_path / "series"))
    assert len(from_nifti) == len(from_dicom) > 0
    a = findings_document(from_nifti, "LPS")["findings"]
    b = findings_document(from_dicom, "LPS")["findings"]
    assert from_dicom.volume.geometry.native_frame == "LPS"
    for fa, fb in zip(a, b):
        assert np.abs(np.subtract(fa["centre_world_mm"], fb["centre_world_mm"])).max() < 3.0  # one 3 mm voxel


def test_detect_command_on_real_ct(tiny_checkpoint, tmp_path, capsys):
    nifti = shared_path("real_ct", "totalsegmentator", "example_ct_sm.nii.gz")
    dicom = shared_path("real_ct", "totalsegmentator", "example_ct_dicom")
    out = tmp_path / "out"
    args = ["detect", str(nifti), str(dicom), "--checkpoint", str(tiny_checkpoint), "--out", str(out),
            "--score-threshold", "0.0", "--device", "cpu", "-q"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "example_ct_sm:" in printed and "CT_Body_3.0:" in printed and "wrote 2 scans" in printed
    for name, source in (("example_ct_sm", nifti), ("CT_Body_3.0", None)):
        folder = out / name
        document = json.loads((folder / "findings.json").read_text())
        labels = nib.load(folder / "labels.nii.gz")
        if source is not None:  # the NIfTI's own grid and affine
            original = nib.load(source)
            assert labels.shape == original.shape and np.allclose(labels.affine, original.affine)
        else:  # the DICOM grid: columns x rows x slices, LPS affine of the series
            assert labels.shape == (512, 512, 20) and document["world_frame"] == "LPS"
        assert int(np.asarray(labels.dataobj).max()) == len(document["findings"]) > 0
        assert (folder / "montage.png").is_file()
    # a rerun skips what is written
    assert main(args) == 0
    assert printed.count("findings in") == 2 and "already written" in capsys.readouterr().out


def test_bad_inputs_end_in_one_line_and_leave_nothing(tiny_checkpoint, tmp_path, capsys):
    import pydicom
    from pydicom.encaps import encapsulate

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images")
    nib.save(nib.Nifti1Image(np.zeros((8, 8), np.int16), np.eye(4)), tmp_path / "flat.nii")
    singular = nib.Nifti1Image(np.zeros((8, 8, 4), np.int16), None)
    singular.header.set_sform(np.diag([0.7, 0.7, 0.0, 1.0]), code=1)
    singular.header.set_qform(None, code=0)
    nib.save(singular, tmp_path / "singular.nii")
    grid = np.zeros((8, 8, 6), np.int16)
    write_dicom_series(tmp_path / "gap", grid, np.diag([0.7, 0.7, 2.0, 1.0]), skip=(3,))
    files = write_dicom_series(tmp_path / "spacing", grid, np.diag([0.7, 0.7, 2.0, 1.0]))
    ds = pydicom.dcmread(files[2])
    ds.PixelSpacing = [0.9, 0.9]
    ds.save_as(files[2])
    files = write_dicom_series(tmp_path / "codec", grid, np.diag([0.7, 0.7, 2.0, 1.0]))
    ds = pydicom.dcmread(files[0])
    ds.file_meta.TransferSyntaxUID = pydicom.uid.JPEGLSLossless
    ds.PixelData = encapsulate([b"\xff" * 64])  # no decoder reads this stream
    ds["PixelData"].VR = "OB"
    ds.save_as(files[0], enforce_file_format=True)
    cases = {"empty": "no DICOM files", "flat.nii": "expected a 3D volume", "gap": "uneven slice positions",
             "singular.nii": "singular voxel-to-world affine", "spacing": "different PixelSpacing",
             "codec": "cannot decode pixel data"}
    for name, problem in cases.items():
        out = tmp_path / f"out_{name}"
        assert main(["detect", str(tmp_path / name), "--checkpoint", str(tiny_checkpoint), "--out", str(out),
                     "-q"]) == 2, name
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and name in err and problem in err, err
        assert not out.exists() or not any(out.iterdir())


def test_the_package_top_is_the_api(tmp_path):
    import subprocess
    import sys

    import lesion_harvester
    from lesion_harvester.errors import DataError

    assert {"load_volume", "Detector", "harvest", "evaluate", "findings_document"} <= set(dir(lesion_harvester))
    # importing the package alone loads no torch (a notebook pays for what it uses)
    code = "import sys, lesion_harvester; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
    for name in ("a", "b"):
        write_dicom_series(tmp_path / "export" / name, np.zeros((8, 8, 3), np.int16), np.diag([0.7, 0.7, 2.0, 1.0]))
    with pytest.raises(DataError, match="holds 2 volumes; name one with key="):
        load_volume(tmp_path / "export")
    assert load_volume(tmp_path / "export", key="series_1_2").shape == (3, 8, 8)


def test_evaluate_in_memory_equals_evaluate_on_files(tmp_path):
    from lesion_harvester import evaluate
    from lesion_harvester.io.annotations import write_slice_boxes, write_tracklets
    from lesion_harvester.structures import SliceBox

    truth = {"v1": [SliceBox(3, (10.0, 10.0, 20.0, 20.0))], "v2": [SliceBox(1, (5.0, 5.0, 9.0, 9.0))]}
    detections = {"v1": [Tracklet.from_pairs([(3, [10, 10, 20, 20, 0.9]), (4, [11, 11, 21, 21, 0.8])])],
                  "v2": [Tracklet.single_slice(2, [40, 40, 50, 50], 0.7)]}
    write_slice_boxes(tmp_path / "gt.pkl", truth)
    write_tracklets(tmp_path / "dets.pkl", detections)
    in_memory, on_files = evaluate(truth, detections), evaluate(tmp_path / "gt.pkl", tmp_path / "dets.pkl")
    assert in_memory.to_json() == on_files.to_json()
    assert in_memory.to_json()["ap"] == pytest.approx(0.5)
