"""The operating point an LPG carries: measured where training validates, stored in best.pt, shown by
``info``, measured afterwards for an older checkpoint, and used by ``detect --fp-per-volume``."""

import json
import shutil

import numpy as np
import pytest

from lesion_harvester import Detector
from lesion_harvester.cli.main import main
from lesion_harvester.evaluation.matching import VolumeTruth
from lesion_harvester.evaluation.metrics import evaluate_detections
from lesion_harvester.io.annotations import read_slice_boxes
from lesion_harvester.io.deeplesion import DeepLesionDataset
from lesion_harvester.lpg.checkpoint import load_checkpoint, save_checkpoint
from lesion_harvester.lpg.train import OPERATING_POINT_MIN_SCORE, scores_at_fp_rates
from tests.conftest import shared_path


def test_scores_at_fp_rates_hand_computed():
    """Two volumes, four lesions; detections TP 0.9, FP 0.8, FP 0.8 (tied), TP 0.5, FP 0.3."""
    scores = np.array([0.9, 0.8, 0.8, 0.5, 0.3])
    fp_per_volume = np.array([0.0, 0.5, 1.0, 1.0, 1.5])
    sensitivity = np.array([0.25, 0.25, 0.25, 0.5, 0.5])
    rates = scores_at_fp_rates(scores, fp_per_volume, sensitivity, lowest=0.05, rates=(0.25, 0.5, 1.0, 2.0))
    # each score lies halfway between the last detection kept and the next lower one (or ``lowest``)
    assert rates["0.25"] == {"score": pytest.approx(0.85), "fp_per_volume": 0.0, "sensitivity": 0.25,
                             "reached": True}
    assert rates["0.5"]["score"] == pytest.approx(0.85)  # the tied 0.8s enter together and make 1 FP per volume
    assert rates["1"] == {"score": pytest.approx(0.4), "fp_per_volume": 1.0, "sensitivity": 0.5, "reached": True}
    assert rates["2"] == {"score": pytest.approx(0.175), "fp_per_volume": 1.5, "sensitivity": 0.5, "reached": False}
    none = scores_at_fp_rates(np.array([0.9]), np.array([1.0]), np.array([0.0]), lowest=0.05, rates=(0.5,))["0.5"]
    assert none["keeps_none"] and none["score"] > 0.9 and none["sensitivity"] == 0.0
    empty = scores_at_fp_rates(np.zeros(0), np.zeros(0), np.zeros(0), lowest=0.05, rates=(1.0,))["1"]
    assert empty == {"score": 0.05, "fp_per_volume": 0.0, "sensitivity": 0.0, "reached": False}


def _validation(data):
    """(key, its volume, its complete labels) of the tiny dataset's validation volume."""
    (key,) = json.loads((data / "splits.json").read_text())["validation"]
    truth = read_slice_boxes(data / "ground_truth" / "complete.pkl")[key]
    return key, DeepLesionDataset(data).load(key), truth


def test_training_stores_an_operating_point_that_detect_reproduces(tiny_dataset, tiny_checkpoint):
    point = load_checkpoint(tiny_checkpoint)["operating_point"]
    assert list(point["rates"]) == ["0.5", "1", "2", "4"] and point["metric"] == "p3d"
    key, volume, truth = _validation(tiny_dataset)
    assert (point["volumes"], point["lesions"]) == (1, len(truth)) and "validation" in point["truth"]
    assert point["stack_score_threshold"] == OPERATING_POINT_MIN_SCORE and point["epoch"] == 1
    for rate, entry in point["rates"].items():
        findings = Detector.from_checkpoint(tiny_checkpoint, device="cpu", fp_per_volume=float(rate))(volume)
        assert findings.found_with["score_threshold"] == entry["score"]
        assert f"operating point at {rate} FP/volume" in findings.found_with["rule"]
        result = evaluate_detections({key: VolumeTruth.from_slice_boxes(truth)}, {key: list(findings.tracklets)})
        false_positives = result.fp_per_volume[-1] if len(findings) else 0.0
        # the detector's findings make on this volume the false positives measured when it was trained
        assert false_positives == pytest.approx(entry["fp_per_volume"]) and false_positives <= float(rate)


def test_info_shows_the_operating_point_and_measures_one_for_an_older_checkpoint(tiny_dataset, tiny_checkpoint,
                                                                                  tmp_path, capsys):
    assert main(["info", str(tiny_checkpoint)]) == 0
    printed = capsys.readouterr().out
    assert "operating_point:" in printed and "1 FP/volume: " in printed and "4 FP/volume: " in printed
    payload = load_checkpoint(tiny_checkpoint)
    stored = payload.pop("operating_point")
    old = tmp_path / "lpg" / "best.pt"  # as trained before training measured one
    old.parent.mkdir()
    save_checkpoint(old, payload)
    assert main(["info", str(old)]) == 0
    assert "operating_point: none" in capsys.readouterr().out
    # measured on the data it trained on (as recorded), stored in the checkpoint
    assert main(["info", str(old), "--measure-operating-point", "--cache-dir", str(tmp_path / "cache"),
                 "--device", "cpu"]) == 0
    assert "1 FP/volume: " in capsys.readouterr().out
    again = load_checkpoint(old)
    assert again["operating_point"]["volumes"] == stored["volumes"] and again["epoch"] == payload["epoch"]
    for rate, entry in stored["rates"].items():
        assert again["operating_point"]["rates"][rate]["score"] == pytest.approx(entry["score"], abs=1e-4)
    assert set(again) == set(payload) | {"operating_point"}  # nothing else changed
    # a dataset that names no validation volumes: measured on the harvest volumes training would hold out
    other = tmp_path / "data"
    shutil.copytree(tiny_dataset, other, ignore=shutil.ignore_patterns(".lesion_harvester_cache"))
    splits = json.loads((other / "splits.json").read_text())
    (other / "splits.json").write_text(json.dumps({**splits, "validation": []}))
    assert main(["info", str(old), "--measure-operating-point", str(other), "--device", "cpu", "-q"]) == 0
    measured = load_checkpoint(old)["operating_point"]
    assert "held out of LPG training" in measured["truth"] and measured["data"] == str(other.resolve())


def test_detect_uses_the_operating_point_and_says_which_threshold(tiny_checkpoint, tmp_path, capsys):
    nifti = shared_path("real_ct", "totalsegmentator", "example_ct_sm.nii.gz")
    point = load_checkpoint(tiny_checkpoint)["operating_point"]
    base = ["detect", str(nifti), "--checkpoint", str(tiny_checkpoint), "--device", "cpu", "-q"]
    assert main([*base, "--out", str(tmp_path / "two"), "--fp-per-volume", "2"]) == 0
    assert "threshold: the checkpoint's operating point at 2 FP/volume" in capsys.readouterr().out
    detection = json.loads((tmp_path / "two" / "example_ct_sm" / "findings.json").read_text())["detection"]
    assert detection["score_threshold"] == point["rates"]["2"]["score"]
    assert detection["stack_score_threshold"] == point["stack_score_threshold"]
    assert detection["request"]["fp_per_volume"] == 2.0 and detection["operating_point"]["rate_fp_per_volume"] == 2
    assert main([*base, "--out", str(tmp_path / "default")]) == 0
    assert "threshold: by default, the checkpoint's operating point at 1 FP/volume" in capsys.readouterr().out
    detection = json.loads((tmp_path / "default" / "example_ct_sm" / "findings.json").read_text())["detection"]
    assert detection["score_threshold"] == point["rates"]["1"]["score"]
    # a rate it carries none for, and a checkpoint without operating points
    assert main([*base, "--out", str(tmp_path / "three"), "--fp-per-volume", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "carries operating points at 0.5, 1, 2, 4" in err
    payload = load_checkpoint(tiny_checkpoint)
    payload.pop("operating_point")
    save_checkpoint(tmp_path / "old.pt", payload)
    old = ["detect", str(nifti), "--checkpoint", str(tmp_path / "old.pt"), "--device", "cpu", "-q"]
    assert main([*old, "--out", str(tmp_path / "old_one"), "--fp-per-volume", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "old.pt: no operating point" in err and "--measure-operating-point" in err
    assert not (tmp_path / "old_one").exists()
    assert main([*old, "--out", str(tmp_path / "old_default")]) == 0
    assert "threshold: score >= 0.3: the default, as the checkpoint carries no operating point" in (
        capsys.readouterr().out)
