"""A tiny end-to-end harvest, and resuming it after the process is killed mid-round."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest

from lesion_harvester.cli.main import main
from lesion_harvester.io.annotations import read_boxes_3d, read_tracklets


def _ledger_rows(run):
    db = sqlite3.connect(run / "ledger.sqlite")
    try:
        steps = db.execute("SELECT round, name FROM steps ORDER BY round, name").fetchall()
        per_round = dict(db.execute("SELECT round, COUNT(*) FROM proposals GROUP BY round").fetchall())
        return steps, per_round
    finally:
        db.close()


@pytest.mark.slow
def test_tiny_harvest_end_to_end(tiny_dataset, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["harvest", str(tiny_dataset), "--out", str(run), "--preset", "tiny", "--rounds", "2"]) == 0
    printed = capsys.readouterr().out
    assert "Table I" in printed and "R (original marks)" in printed
    report = json.loads((run / "report.json").read_text())
    assert set(report) >= {"original_marks", "rounds", "elapsed_s"}
    assert [e["round"] for e in report["rounds"]] == [1, 2]
    for entry in report["rounds"]:
        assert set(entry) >= {"round", "lpg", "lpg_lpc", "n_harvested", "n_hard_negatives", "threshold"}
        assert list(entry["lpg_lpc"]["recall_at_precision"]) == ["0.8", "0.85", "0.9", "0.95"]
        support = entry["vm_support"]
        assert support["vm_new_lesions_above"] >= 0 and 0.0 <= support["precision_lower_bound"] <= 1.0
    for name in ("harvested.pkl", "hard_negatives.pkl", "completed_annotations.pkl", "harvested.csv", "report.md",
                 "fig5a_pr.png", "fig5b_lpc_variants.png"):
        assert (run / name).is_file(), name
    completed = read_boxes_3d(run / "completed_annotations.pkl")
    splits = json.loads((tiny_dataset / "splits.json").read_text())
    assert set(completed) >= set(splits["harvest"]) | set(splits["fully_annotated"])
    steps, per_round = _ledger_rows(run)
    assert ("1", "mine") in [(str(r), n) for r, n in steps] and (2, "mine") in steps
    proposals = read_tracklets(run / "round_1" / "proposals.pkl")
    assert per_round[1] == sum(len(v) for v in proposals.values())
    # rebuilding the report gives the same numbers
    assert main(["report", str(run)]) == 0
    assert json.loads((run / "report.json").read_text())["rounds"] == report["rounds"]


@pytest.mark.slow
def test_harvest_resumes_after_a_kill(tiny_dataset, tmp_path):
    command = [sys.executable, "-m", "lesion_harvester.cli.main", "harvest", str(tiny_dataset), "--preset", "tiny",
               "--rounds", "2"]
    clean = tmp_path / "clean"
    subprocess.run(command + ["--out", str(clean)], check=True, capture_output=True)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(command + ["--out", str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:  # kill it while round 1's LPC trains
        if (killed / "round_1" / "lpc").is_dir() or (killed / "round_1" / "proposals.pkl").is_file():
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    steps_before, _ = _ledger_rows(killed)
    assert (1, "mine") not in steps_before  # killed mid-round
    subprocess.run(command + ["--out", str(killed)], check=True, capture_output=True)
    steps_clean, rows_clean = _ledger_rows(clean)
    steps_after, rows_after = _ledger_rows(killed)
    assert steps_after == steps_clean  # every step exactly once
    assert rows_after == rows_clean  # no proposal duplicated or lost
    a, b = read_tracklets(clean / "harvested.pkl"), read_tracklets(killed / "harvested.pkl")
    assert list(a) == list(b)
    for key in a:
        assert len(a[key]) == len(b[key])
        for x, y in zip(a[key], b[key]):
            assert np.array_equal(x.z_indices, y.z_indices) and np.allclose(x.boxes_xyxy_px, y.boxes_xyxy_px)


def test_harvest_refuses_a_folder_with_other_settings(tiny_dataset, tmp_path, capsys):
    run = tmp_path / "run"
    from lesion_harvester.config import load_preset
    from lesion_harvester.harvest.rounds import open_run

    open_run(tiny_dataset, run, load_preset("tiny"), progress=False).ledger.close()
    assert main(["harvest", str(tiny_dataset), "--out", str(run), "--preset", "demo", "--rounds", "1"]) == 2
    assert "other settings" in capsys.readouterr().err


def test_real_layout_needs_the_released_files(tmp_path, capsys):
    from lesion_harvester.io.deeplesion import read_dl_info, write_dl_info
    from tests.conftest import shared_path

    rows = read_dl_info(shared_path("deeplesion", "DL_info_excerpt_158rows.csv"))
    (tmp_path / "Images_png").mkdir()
    write_dl_info(tmp_path / "DL_info.csv", rows)
    assert main(["harvest", str(tmp_path), "--out", str(tmp_path / "run")]) == 2
    assert "--fully-annotated" in capsys.readouterr().err


@pytest.mark.parametrize("exponents", [(), (1.0, -1.0)])
def test_bad_fusion_exponents_are_refused_before_any_work(tiny_dataset, tmp_path, exponents):
    import dataclasses

    from lesion_harvester.config import load_preset
    from lesion_harvester.errors import ConfigError
    from lesion_harvester.harvest.rounds import open_run

    preset = load_preset("tiny")
    with pytest.raises(ConfigError, match="harvest.fusion_exponents"):
        preset = dataclasses.replace(preset, harvest=dataclasses.replace(preset.harvest, fusion_exponents=exponents))
        open_run(tiny_dataset, tmp_path / "run", preset, progress=False)
    assert not (tmp_path / "run").exists()


def test_calibration_volumes_stay_out_of_lpg_training_and_alone_set_the_threshold(tiny_dataset, tmp_path):
    import dataclasses

    from lesion_harvester.config import load_preset
    from lesion_harvester.errors import ConfigError
    from lesion_harvester.harvest.ledger import ProposalRow
    from lesion_harvester.harvest.mine import mine_round
    from lesion_harvester.harvest.rounds import lpg_fully_annotated_file, open_run
    from lesion_harvester.harvest.steps import pool_examples
    from lesion_harvester.io.annotations import read_slice_boxes
    from lesion_harvester.structures import Tracklet

    preset = load_preset("tiny")
    preset = dataclasses.replace(preset, harvest=dataclasses.replace(preset.harvest, calibration_volumes=1))
    run = open_run(tiny_dataset, tmp_path / "run", preset, progress=False)
    v_m = sorted(run.inputs.fully_annotated)
    assert len(run.calibration) == 1 and set(run.calibration) < set(v_m)
    assert open_run(tiny_dataset, tmp_path / "run", preset, progress=False).calibration == run.calibration
    (held,) = run.calibration
    (other,) = set(v_m) - {held}
    assert set(read_slice_boxes(lpg_fully_annotated_file(run))) == {other}  # the LPG's V_M

    def row(key, i, x, score, status):  # single-slice boxes in a corner, far from every mark
        t = Tracklet(np.array([0]), np.array([[x, 0.0, x + 3.0, 3.0]]), np.array([score]))
        return ProposalRow(1, key, i, t, score, 1.0, score, status)

    # the calibration volume: a lesion at 0.8, a false positive at 0.5; the other: a false positive at 0.9
    vm = [row(held, 0, 0.0, 0.8, "fa_lesion"), row(held, 1, 20.0, 0.5, "fa_negative"),
          row(other, 0, 0.0, 0.9, "fa_negative")]
    positives, negatives = pool_examples([([(r.volume, r.tracklet) for r in vm if r.status == "fa_lesion"],
                                           [(r.volume, r.tracklet) for r in vm if r.status == "fa_negative"])],
                                         set(run.calibration))
    assert {key for key, _ in positives + negatives} == {other}  # nothing of the calibration volume
    marks = run.inputs.dataset.marks(v_m)
    assert mine_round(run.threshold_rows(vm), marks, [], [], [], preset.harvest).info["threshold"] == pytest.approx(0.8)
    # all of V_M would stop at the other volume's false positive (no threshold at all)
    assert mine_round(vm, marks, [], [], [], preset.harvest).info["threshold"] is None

    too_many = dataclasses.replace(preset, harvest=dataclasses.replace(preset.harvest, calibration_volumes=2))
    with pytest.raises(ConfigError, match="calibration_volumes"):
        open_run(tiny_dataset, tmp_path / "other_run", too_many, progress=False)
    assert not (tmp_path / "other_run").exists()  # nothing written that a corrected run would trip over
