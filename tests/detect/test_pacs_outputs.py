"""``detect`` on a PACS folder: outputs named by series, every finding naming its input, an index, overlapping
findings accounted for, a rerun that loads nothing, and findings readable in a notebook."""

import csv
import json

import nibabel as nib
import numpy as np
import pydicom
import pytest

from lesion_harvester import findings_document, load_volume
from lesion_harvester.cli.main import main
from lesion_harvester.detect import detector as detector_module
from lesion_harvester.detect.run import write_scan
from lesion_harvester.geometry.frames import RAS_TO_LPS
from lesion_harvester.report.findings_montage import findings_montage
from lesion_harvester.structures import Findings, Tracklet
from tests.conftest import shared_path
from tests.dicom_series import write_dicom_series

THRESHOLD = "0.14"  # a few findings of the one-epoch tiny LPG on example_ct_sm (its scores reach about 0.16)


def _real_nifti():
    return shared_path("real_ct", "totalsegmentator", "example_ct_sm.nii.gz")


def _twin(folder, description, number):
    """example_ct_sm (real CT) as a DICOM series of this description and number; its UIDs."""
    image = nib.load(_real_nifti())
    files = write_dicom_series(folder, np.asarray(image.dataobj).astype(np.int16), RAS_TO_LPS @ image.affine,
                               tags={"SeriesDescription": description, "SeriesNumber": number})
    ds = pydicom.dcmread(files[0])
    return {"patient_id": ds.PatientID, "study_instance_uid": ds.StudyInstanceUID,
            "series_instance_uid": ds.SeriesInstanceUID}


def _read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_a_folder_of_series_gives_outputs_named_by_series_and_an_index(tiny_checkpoint, tmp_path, capsys,
                                                                       monkeypatch):
    export = tmp_path / "export"
    first = _twin(export / "a", "Abdomen 3mm", 2)
    second = _twin(export / "b", "Abdomen 3mm", 2)  # the same description and number: a second study
    nifti, out = _real_nifti(), tmp_path / "out"
    args = ["detect", str(export), str(nifti), "--checkpoint", str(tiny_checkpoint), "--out", str(out),
            "--score-threshold", THRESHOLD, "--device", "cpu", "-q"]
    assert main(args) == 0
    assert "threshold: score >= 0.14, as asked" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["Abdomen_3mm_2", "Abdomen_3mm_2_2", "example_ct_sm",
                                                     "index.csv", "index.json"]
    index = _read_csv(out / "index.csv")
    folders = [row["folder"] for row in index]
    assert folders[2] == "example_ct_sm" and {row["status"] for row in index} == {"written"}
    by_series = {row["series_instance_uid"]: row for row in index}
    seen = 0
    for ids in (first, second):
        row = by_series[ids["series_instance_uid"]]
        assert (row["patient_id"], row["study_instance_uid"]) == (ids["patient_id"], ids["study_instance_uid"])
        assert (row["series_description"], row["series_number"], row["input"]) == ("Abdomen 3mm", "2", str(export))
        document = json.loads((out / row["folder"] / "findings.json").read_text())
        assert document["input"]["series_instance_uid"] == ids["series_instance_uid"]
        assert int(row["findings"]) == len(document["findings"])
        for finding in document["findings"]:  # every finding says where it comes from
            assert {k: finding[k] for k in ids} == ids and finding["input"] == str(export)
        rows = _read_csv(out / row["folder"] / "findings.csv")
        assert len(rows) == len(document["findings"])
        assert all({k: r[k] for k in ids} == ids and r["input"] == str(export) for r in rows)
        seen += len(rows)
    assert seen > 0
    nifti_rows = _read_csv(out / "example_ct_sm" / "findings.csv")
    assert nifti_rows and all(r["file_name"] == "example_ct_sm.nii.gz" and r["series_instance_uid"] == ""
                              for r in nifti_rows)

    # a rerun with nothing to do builds no model, and a rerun asking for another threshold is told so
    def no_model(*_args, **_kwargs):
        raise AssertionError("a rerun with nothing to scan loaded the model")

    monkeypatch.setattr(detector_module.Detector, "from_checkpoint", no_model)
    assert main(args) == 0
    assert capsys.readouterr().out.count("already written") == 3
    assert main([*args[:-5], "--score-threshold", "0.5", "--device", "cpu", "-q"]) == 0
    assert "already written with another checkpoint or threshold (score >= 0.14, as asked)" in capsys.readouterr().out
    # the index keeps the scans of earlier runs into the same folder
    (tmp_path / "one").mkdir()
    _twin(tmp_path / "one", "Chest", 5)
    monkeypatch.undo()
    assert main(["detect", str(tmp_path / "one"), "--checkpoint", str(tiny_checkpoint), "--out", str(out),
                 "--score-threshold", THRESHOLD, "--device", "cpu", "-q"]) == 0
    assert [row["folder"] for row in _read_csv(out / "index.csv")] == [*folders, "Chest_5"]
    assert json.loads((out / "index.json").read_text())["scans"][-1]["series_description"] == "Chest"


def _overlapping_findings(volume) -> Findings:
    """Two hand-made findings that share voxels on two slices: 0.9 at x, y 10-29 on slices 5-7, 0.6 at
    x, y 20-39 on slices 6-8."""
    first = Tracklet(np.array([5, 6, 7]), np.tile([10.0, 10.0, 29.0, 29.0], (3, 1)), np.array([0.8, 0.9, 0.7]))
    second = Tracklet(np.array([6, 7, 8]), np.tile([20.0, 20.0, 39.0, 39.0], (3, 1)), np.array([0.6, 0.5, 0.4]))
    return Findings(volume, (second, first))


def test_overlapping_findings_say_who_owns_the_shared_voxels(tmp_path):
    path = _real_nifti()
    findings = _overlapping_findings(load_volume(path))
    write_scan(findings, tmp_path / "scan")
    document = json.loads((tmp_path / "scan" / "findings.json").read_text())
    assert "the higher score (the lower id) owns the shared voxels" in document["label_map"]["overlap"]
    assert document["label_map"]["findings_sharing_voxels"] == 2
    first, second = document["findings"]
    assert (first["box_voxels"], first["label_voxels"]) == (1200, 1200)
    assert (second["box_voxels"], second["label_voxels"]) == (1200, 1000)  # 2 slices x 10 x 10 go to finding 1
    assert second["shares_voxels_with"] == [{"id": 1, "voxels": 200, "owner": 1}]
    assert first["shares_voxels_with"] == [{"id": 2, "voxels": 200, "owner": 1}]
    labels = np.asarray(nib.load(tmp_path / "scan" / "labels.nii.gz").dataobj)
    assert np.bincount(labels.ravel())[1:].tolist() == [1200, 1000]
    # finding 2's record keeps its own box: its centre is the box's, not the clipped label's
    affine = nib.load(path).affine
    own = np.mean([second["box_input_voxels"]["ijk_min"], second["box_input_voxels"]["ijk_max"]], axis=0)
    assert second["centre_world_mm"] == pytest.approx(affine[:3, :3] @ own + affine[:3, 3], abs=1e-3)
    clipped = np.argwhere(labels == 2).mean(axis=0)
    assert np.linalg.norm(affine[:3, :3] @ (clipped - own)) > 1.0  # what a centroid of the label map would move


def test_findings_print_short_and_give_rows_in_world_mm():
    path = _real_nifti()
    findings = _overlapping_findings(load_volume(path))
    text = repr(findings)
    assert text == "Findings('example_ct_sm': 2 findings, top scores 0.90 0.60)" and len(text) < 100
    rows = findings.rows()
    assert [r["id"] for r in rows] == [1, 2] and rows[0]["world_frame"] == "RAS"
    document = findings_document(findings)
    for row, record in zip(rows, document["findings"]):
        assert [row[f"centre_world_{a}_mm"] for a in "xyz"] == record["centre_world_mm"]
        assert [row[f"box_world_min_{a}_mm"] for a in "xyz"] == record["box_world_mm"]["min"]
        assert row["file_name"] == "example_ct_sm.nii.gz" and row["input"] == str(path)
    lps = findings.rows("LPS")[0]
    assert lps["world_frame"] == "LPS" and lps["centre_world_x_mm"] == pytest.approx(-rows[0]["centre_world_x_mm"])
    # the montage titles give each finding's world position
    figure = findings_montage(findings)
    title = figure.axes[0].get_title()
    x, y, z = (rows[0][f"centre_world_{a}_mm"] for a in "xyz")
    assert f"RAS ({x:.1f}, {y:.1f}, {z:.1f}) mm" in title and "#1 score 0.90" in title
