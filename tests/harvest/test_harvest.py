"""A tiny end-to-end harvest, and resuming it after the process is killed mid-round."""

import dataclasses
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
from lesion_harvester.dataset.roles import Partition
from lesion_harvester.harvest.verify import known_extents, on_lesions
from lesion_harvester.io.annotations import read_boxes_3d, read_slice_boxes, read_tracklets
from lesion_harvester.io.deeplesion import DeepLesionDataset
from lesion_harvester.lpg.checkpoint import checkpoint_operating_point
from lesion_harvester.lpg.train import operating_point_of
from lesion_harvester.structures import SliceBox


def _ledger_rows(run):
    db = sqlite3.connect(run / "ledger.sqlite")
    try:
        steps = db.execute("SELECT round, name FROM steps ORDER BY round, name").fetchall()
        per_round = dict(db.execute("SELECT round, COUNT(*) FROM proposals GROUP BY round").fetchall())
        return steps, per_round
    finally:
        db.close()


def _elapsed(run) -> float:
    db = sqlite3.connect(run / "ledger.sqlite")
    try:
        return float(db.execute("SELECT value FROM meta WHERE key = 'elapsed_s'").fetchone()[0])
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
    _hard_negatives_keep_the_rule(run, tiny_dataset, splits)
    _operating_points_rest_on_the_complete_labels(run, tiny_dataset, splits)
    # rebuilding the report gives the same numbers
    assert main(["report", str(run)]) == 0
    assert json.loads((run / "report.json").read_text())["rounds"] == report["rounds"]
    # the harvest's models work in the other commands
    fold = run / "round_1" / "lpc" / "fold0.pt"
    assert main(["classify", str(tiny_dataset), "--checkpoint", str(fold), "--proposals",
                 str(run / "round_1" / "proposals.pkl"), "--out", str(tmp_path / "scored.pkl")]) == 0
    assert main(["info", str(fold)]) == 0 and "lesion-harvester-lpc/1" in capsys.readouterr().out


def _hard_negatives_keep_the_rule(run, data, splits):
    """The pooled N (Table III's, the fine-tuning's) touches no positive of any round nor a known label;
    each round's V_H hard negatives are at most five per volume, each with s_g >= 0.5."""
    dataset = DeepLesionDataset(data)
    labels = {k: [m.slice_box() for m in ms] for k, ms in dataset.marks(splits["harvest"]).items()}  # V_H's marks
    complete = read_slice_boxes(data / "ground_truth" / "complete.pkl")
    labels.update({k: complete[k] for k in splits["fully_annotated"] if k in complete})  # V_M's labels
    spacing = {k: dataset.sub_volumes[k].spacing_zyx_mm for k in labels}
    db = sqlite3.connect(run / "ledger.sqlite")
    try:
        rows = db.execute("SELECT round, volume, objectness, status FROM proposals").fetchall()
    finally:
        db.close()
    for r in {row[0] for row in rows}:
        hard = [(v, s_g) for q, v, s_g, status in rows if q == r and status == "hard_negative"]
        assert all(s_g >= 0.5 for _, s_g in hard)
        assert max([sum(v == w for w, _ in hard) for v, _ in hard], default=0) <= 5
    harvested = [(k, t) for k, ts in read_tracklets(run / "harvested.pkl").items() for t in ts]
    negatives = [(k, t) for k, ts in read_tracklets(run / "hard_negatives.pkl").items() for t in ts]
    known = known_extents(harvested, labels, spacing)
    assert not on_lesions(negatives, known).any()


def _operating_points_rest_on_the_complete_labels(run, data, splits):
    """Each round's LPG carries the operating point of its scan of V_H^test and of the validation
    volumes (complete labels), the same as measured again from the files the harvest wrote."""
    complete = read_slice_boxes(data / "ground_truth" / "complete.pkl")
    truth = {k: complete.get(k, []) for k in splits["harvest_test"] + splits["validation"]}
    for r in (1, 2):
        point = checkpoint_operating_point(run / f"round_{r}" / "lpg" / "best.pt")
        assert point["harvest_round"] == r and point["volumes"] == len(truth)
        assert point["stack_score_threshold"] == pytest.approx(0.1)  # the tiny preset's t_G: what the scan used
        scanned = read_tracklets(run / f"round_{r}" / "proposals.pkl")
        detections = {k: scanned.get(k, []) for k in splits["harvest_test"]}
        detections.update(read_tracklets(run / f"round_{r}" / "validation_proposals.pkl"))
        again = operating_point_of(detections, truth, point["stack_score_threshold"])
        assert again["lesions"] == point["lesions"] and list(again["rates"]) == list(point["rates"])
        for rate, entry in point["rates"].items():  # the ledger keeps the scores to float32's precision
            assert again["rates"][rate] == {**entry, "score": pytest.approx(entry["score"], abs=1e-5)}
        assert point["replaces"]["truth"].startswith("splits.json 'validation'")  # the training's, on 1 volume


def test_operating_points_are_measured_on_complete_labels_only():
    box = [SliceBox(3, (10.0, 10.0, 20.0, 20.0))]
    base = Partition(None, None, {"vm": box}, ["h1", "h2"], {"val": box}, {"h1": box}, None, "")
    truth, said = base.operating_point_truth()  # validation labels are RECIST marks: an unmarked lesion would be an FP
    assert list(truth) == ["h1"] and said.startswith("V_H^test (1 volumes)")
    truth, said = dataclasses.replace(base, validation_complete=True).operating_point_truth()
    assert list(truth) == ["h1", "val"] and "validation volumes (1)" in said
    assert "vm" not in truth  # V_M's complete labels trained the LPG
    assert dataclasses.replace(base, holdout={}).operating_point_truth() == ({}, "")


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
    elapsed_before = _elapsed(killed)
    assert elapsed_before > 0  # the steps finished before the kill are counted
    subprocess.run(command + ["--out", str(killed)], check=True, capture_output=True)
    report = json.loads((killed / "report.json").read_text())
    # both runs; the report is written before the time its own writing takes is counted
    assert elapsed_before < report["elapsed_s"] <= _elapsed(killed)
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


def test_table3_settings_do_not_change_what_a_harvest_resumes_with(tiny_dataset):
    import dataclasses

    from lesion_harvester.config import Table3Config, load_preset
    from lesion_harvester.harvest.rounds import harvest_fingerprint

    demo = load_preset("demo")
    assert demo.table3.epochs == 2  # the demo's Table III smoke path

    def of(preset):
        return harvest_fingerprint(preset, tiny_dataset, None, None)

    assert of(demo) == of(dataclasses.replace(demo, table3=Table3Config()))
    assert of(demo) == of(load_preset("demo", ["table3.epochs=5", "harvest.rounds=5"]))
    assert of(demo) != of(load_preset("demo", ["harvest.precision=0.9"]))


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
    assert run.ledger.withheld() == (run.calibration, [])  # recorded for the tools that read the run later
    (other,) = set(v_m) - set(run.calibration)
    run.ledger.set_withheld([other], [])  # as if a later version drew another: the run goes on with its record
    assert open_run(tiny_dataset, tmp_path / "run", preset, progress=False).calibration == [other]
    run.ledger.set_withheld(run.calibration, [])
    (held,) = run.calibration
    (other,) = set(v_m) - {held}
    assert set(read_slice_boxes(lpg_fully_annotated_file(run, 1))) == {other}  # the LPG's V_M

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

    too_many = dataclasses.replace(preset, harvest=dataclasses.replace(preset.harvest, calibration_volumes=3))
    with pytest.raises(ConfigError, match="calibration_volumes"):
        open_run(tiny_dataset, tmp_path / "other_run", too_many, progress=False)
    assert not (tmp_path / "other_run").exists()  # nothing written that a corrected run would trip over
    # all of V_M: the LPG trains on the marks alone (V_M's among them), and no V_M volume is complete for it
    every = dataclasses.replace(preset, harvest=dataclasses.replace(preset.harvest, calibration_volumes=2))
    run = open_run(tiny_dataset, tmp_path / "all_run", every, progress=False)
    assert run.calibration == v_m and read_slice_boxes(lpg_fully_annotated_file(run, 1)) == {}
    from lesion_harvester.lpg.sources import build_sources

    sources = build_sources(tiny_dataset, lpg_fully_annotated_file(run, 1))
    assert set(v_m) <= set(sources.training.volume_keys) and sources.training.complete_keys == []
    marks = {k: len(v) for k, v in run.inputs.dataset.marks(v_m).items()}
    assert sum(len(r.positives) for r in sources.training.records if r.key in set(v_m)) == sum(marks.values())
    run.ledger.close()


@pytest.mark.slow
def test_the_real_release_layout_without_validation_rows(tiny_dataset, tmp_path, capsys):
    """No splits.json, no validation rows, V_M and V_H^test as files: the harvest holds a validation
    set out of V_H instead of choosing the LPG on an empty one, and says why a round harvests nothing."""
    from lesion_harvester.dataset.roles import resolve_partition
    from lesion_harvester.io.deeplesion import read_dl_info
    from tests.conftest import load_benchmark

    tool = load_benchmark("release_layout")
    data = tmp_path / "release"
    tool.release_layout(tiny_dataset, data)
    assert not (data / "splits.json").exists() and {r.split for r in read_dl_info(data / "DL_info.csv")} <= {1, 3}
    fa, holdout = str(data / "fully_annotated.pkl"), str(data / "holdout.pkl")

    part = resolve_partition(data, fa, holdout, need_holdout=True)
    assert part.validation and set(part.validation) <= set(part.harvest) and part.validation_held_out
    assert not set(part.validation) & set(part.training_keys)  # they validate the LPG, they do not train it
    assert "held out" in part.validation_source

    run = tmp_path / "run"
    assert main(["harvest", str(data), "--out", str(run), "--preset", "tiny", "--rounds", "1", "--quiet",
                 "--fully-annotated", fa, "--holdout", holdout]) == 0
    assert "Table I" in capsys.readouterr().out
    log = (run / "round_1" / "lpg" / "train.log").read_text()
    assert "validation: " in log and "held out" in log
    history = json.loads((run / "round_1" / "lpg" / "train_log.json").read_text())["history"]
    assert all(entry["score"] is not None for entry in history)  # chosen on real validation slices
    report = json.loads((run / "report.json").read_text())
    (entry,) = report["rounds"]
    assert (entry["n_harvested"] > 0) == (entry["nothing_harvested_because"] is None)
    if entry["nothing_harvested_because"]:
        assert "harvested nothing" in (run / "report.md").read_text()


def test_an_empty_validation_set_keeps_the_last_epoch(tiny_dataset, tmp_path, monkeypatch):
    import dataclasses

    from lesion_harvester.config import load_preset
    from lesion_harvester.lpg import train as train_module
    from lesion_harvester.lpg.checkpoint import load_checkpoint
    from lesion_harvester.lpg.sources import build_sources

    def no_validation(*args, **kwargs):
        sources = build_sources(*args, **kwargs)
        return dataclasses.replace(sources, validation={})

    monkeypatch.setattr(train_module, "build_sources", no_validation)
    summary = train_module.train_lpg(tiny_dataset, tmp_path / "lpg", load_preset("tiny"), "cpu", progress=False)
    assert summary["best_score"] is None and [e["score"] for e in summary["history"]] == [None, None]
    assert load_checkpoint(tmp_path / "lpg" / "best.pt")["epoch"] == 1  # the latest of the two epochs
    assert "best.pt will be the latest epoch" in (tmp_path / "lpg" / "train.log").read_text()


@pytest.mark.slow
def test_a_harvest_with_held_out_marks_estimates_its_precision(tiny_dataset, tmp_path, capsys):
    import sqlite3

    from lesion_harvester.config import load_preset
    from lesion_harvester.harvest.rounds import open_run

    run = tmp_path / "run"
    settings = ["--set", "harvest.calibration_marks=0.5", "--set", "harvest.threshold=combined"]
    assert main(["harvest", str(tiny_dataset), "--out", str(run), "--preset", "tiny", "--rounds", "1", "--quiet",
                 *settings]) == 0
    preset = load_preset("tiny", ["harvest.calibration_marks=0.5", "harvest.threshold=combined"])
    opened = open_run(tiny_dataset, run, preset, progress=False)
    held = opened.held_out_marks
    assert opened.ledger.withheld() == ([], held)
    opened.ledger.close()
    assert len(held) == 1 and not set(held) & (set(opened.inputs.holdout) | set(opened.inputs.validation))
    # no model learnt from the held-out volume's marks: the LPG trained on one volume less than usual...
    from lesion_harvester.lpg.sources import build_sources

    usual = build_sources(tiny_dataset).training.volume_keys
    assert held[0] in usual
    trained = json.loads((run / "round_1" / "lpg" / "train_log.json").read_text())["training_volumes"]
    assert trained == len(usual) - 1
    db = sqlite3.connect(run / "ledger.sqlite")
    scored = db.execute("SELECT COUNT(*), COUNT(score) FROM proposals WHERE round = 1 AND volume = ? AND status = "
                        "'recist' AND objectness >= 0.1", (held[0],)).fetchone()
    db.close()
    assert scored[0] == scored[1]  # ...and the proposals on its marks got fused scores for the estimate
    report = json.loads((run / "report.json").read_text())
    (entry,) = report["rounds"]
    assert entry["threshold_rule"] == "combined"
    assert set(entry["estimated_precision"]) == {"vm", "marks", "combined", "fp_rate", "vm_and_fp_rate"}
    assert "true_precision_holdout" in entry
    assert "Precision of the harvested lesions: estimated and true" in (run / "report.md").read_text()


def test_the_lpc_takes_v_h_negatives_off_known_lesions_and_outside_closed_volumes(tiny_dataset, tiny_harvest_run,
                                                                                   tmp_path):
    """round_lpc_examples on round 1 of the tiny harvest as it stood before classification (its
    V_H proposals candidates again): with lpc.vh_negatives_per_volume, the V_H negatives are
    candidates under the cut, none in V_M, V_H^test or a held-out volume, none on a known lesion."""
    import shutil

    from lesion_harvester.harvest.rounds import open_run, round_lpc_examples
    from tests.conftest import load_benchmark, tiny_harvest_preset

    run_dir = tmp_path / "run"
    shutil.copytree(tiny_harvest_run, run_dir)
    preset = tiny_harvest_preset(1)
    run = open_run(tiny_dataset, run_dir, preset, progress=False, cache_dir=tiny_harvest_run.parent / "cache")
    try:
        mined = run.ledger.proposals(1, statuses=("harvested", "hard_negative", "rejected"))
        with run.ledger.transaction() as db:
            run.ledger.set_statuses(db, 1, [(row.volume, row.idx, "candidate") for row in mined])
        assert round_lpc_examples(run, 1).negatives == []  # off in the preset
        lpc = dataclasses.replace(preset.lpc, vh_negatives_per_volume=3, vh_negatives_below=0.9)
        examples = round_lpc_examples(dataclasses.replace(run, preset=dataclasses.replace(preset, lpc=lpc)), 1)
        # benchmarks/lpc_check.py retrains a round's LPC on the same examples, read from the ledger alone
        again = load_benchmark("lpc_check").round_examples(run.ledger, run.inputs,
                                                             dataclasses.replace(preset, lpc=lpc), 1)
    finally:
        run.close()

    def keys(items):
        return [(key, t.z_indices.tobytes(), t.boxes_xyxy_px.tobytes()) for key, t in items]

    for name in ("vm_items", "positives", "negatives", "unlabelled"):
        assert keys(getattr(again, name)) == keys(getattr(examples, name)), name
    assert again.vm_labels.tolist() == examples.vm_labels.tolist()
    negatives = examples.negatives
    assert negatives
    closed = set(run.inputs.fully_annotated) | set(run.inputs.holdout) | run.unseen
    assert not {key for key, _ in negatives} & closed
    assert all(lpc.min_objectness <= t.score < 0.9 for _, t in negatives)
    assert max(sum(key == k for k, _ in negatives) for key, _ in negatives) <= 3
    candidates = {(row.volume, row.tracklet.z_indices.tobytes(), row.tracklet.boxes_xyxy_px.tobytes()) for row in mined}
    assert all((key, t.z_indices.tobytes(), t.boxes_xyxy_px.tobytes()) in candidates for key, t in negatives)
    assert not on_lesions(negatives, run.known_lesions()).any()
