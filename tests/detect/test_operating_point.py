"""The operating point an LPG carries: measured where training validates, stored in best.pt, shown by
``info``, measured afterwards for an older checkpoint, and used by ``detect --fp-per-volume``."""

import json
import shutil

import numpy as np
import pytest

from lesion_harvester.cli.main import main
from lesion_harvester.lpg.checkpoint import load_checkpoint, save_checkpoint
from lesion_harvester.lpg.train import scores_at_fp_rates


def test_scores_at_fp_rates_hand_computed():
    """Two volumes, four lesions; detections TP 0.9, FP 0.8, FP 0.8 (tied), TP 0.5, FP 0.3."""
    scores = np.array([0.9, 0.8, 0.8, 0.5, 0.3])
    fp_per_volume = np.array([0.0, 0.5, 1.0, 1.0, 1.5])
    sensitivity = np.array([0.25, 0.25, 0.25, 0.5, 0.5])
    rates = scores_at_fp_rates(scores, fp_per_volume, sensitivity, lowest=0.05, rates=(0.25, 0.5, 1.0, 2.0))
    assert rates["0.25"] == {"score": 0.9, "fp_per_volume": 0.0, "sensitivity": 0.25, "reached": True}
    assert rates["0.5"]["score"] == 0.9  # the tied 0.8s enter together and make 1 FP per volume
    assert rates["1"] == {"score": 0.5, "fp_per_volume": 1.0, "sensitivity": 0.5, "reached": True}
    assert rates["2"] == {"score": 0.3, "fp_per_volume": 1.5, "sensitivity": 0.5, "reached": False}
    none = scores_at_fp_rates(np.array([0.9]), np.array([1.0]), np.array([0.0]), lowest=0.05, rates=(0.5,))["0.5"]
    assert none["keeps_none"] and none["score"] > 0.9 and none["sensitivity"] == 0.0
    empty = scores_at_fp_rates(np.zeros(0), np.zeros(0), np.zeros(0), lowest=0.05, rates=(1.0,))["1"]
    assert empty == {"score": 0.05, "fp_per_volume": 0.0, "sensitivity": 0.0, "reached": False}


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
