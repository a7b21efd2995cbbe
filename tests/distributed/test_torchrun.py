"""torchrun with two CPU processes (gloo): sharded scans equal the one-process result, and resume."""

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ENTRY = Path(__file__).with_name("torchrun_entry.py")


def torchrun(*args: str, processes: int = 2, die_rank: int | None = None) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node N`` of the CLI, one thread per process (as torchrun
    sets it), so that one process alone computes exactly what each of several does."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    env.pop("TEST_DIE_RANK", None)
    if die_rank is not None:
        env["TEST_DIE_RANK"] = str(die_rank)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
               str(ENTRY), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def _same_tracklets(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for key in a:
        assert len(a[key]) == len(b[key]), key
        for x, y in zip(a[key], b[key]):
            assert x == y  # the authors' format: (z, [x1, y1, x2, y2, score]) pairs


def test_a_sharded_propose_equals_one_process_and_survives_a_dead_rank(tiny_dataset, tiny_checkpoint, tmp_path):
    args = ["propose", str(tiny_dataset), "--checkpoint", str(tiny_checkpoint), "--split", "harvest",
            "--device", "cpu", "--cache-dir", str(tmp_path / "cache"), "-q"]
    alone = tmp_path / "alone.pkl"
    assert torchrun(*args, "--out", str(alone), processes=1).returncode == 0
    # a first launch whose rank 1 dies after its first volume: torchrun stops the other, nothing is written
    out = tmp_path / "sharded.pkl"
    died = torchrun(*args, "--out", str(out), die_rank=1)
    assert died.returncode != 0
    assert not out.exists()
    saved = sorted(p.stem for p in (tmp_path / "sharded.pkl.partial").glob("*.pkl"))
    assert 1 <= len(saved) < 4  # rank 1's first volume at least, never all four
    # the same command again scans what is missing and merges every rank's volumes
    rerun = torchrun(*args, "--out", str(out))
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "wrote" in rerun.stdout and rerun.stdout.count("wrote") == 1  # only rank 0 reports
    assert not (tmp_path / "sharded.pkl.partial").exists()
    with open(alone, "rb") as a, open(out, "rb") as b:
        _same_tracklets(pickle.load(a), pickle.load(b))
    assert (tmp_path / "sharded.csv").read_text() == (tmp_path / "alone.csv").read_text()
    assert np.any([len(v) for v in pickle.load(open(out, "rb")).values()])  # there is something to compare


def test_commands_that_run_as_one_process_refuse_torchrun(tiny_dataset, tmp_path):
    result = torchrun("marks", str(tiny_dataset), "--out", str(tmp_path / "marks.pkl"))
    assert result.returncode != 0
    assert "runs as one process" in result.stderr
    assert not (tmp_path / "marks.pkl").exists()


def _weights(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def test_ddp_training_equals_one_process_on_the_whole_batch(tiny_dataset, tmp_path):
    """train-lpg --preset tiny (2 epochs of 3 iterations, batch 4, validation and hard-background
    mining between them): two ranks with 2 samples each end where one process with 4 does."""
    args = ["train-lpg", str(tiny_dataset), "--preset", "tiny", "--device", "cpu",
            "--set", "lpg_train.loader_workers=0", "-q"]
    alone = torchrun(*args, "--out", str(tmp_path / "alone"), "--cache-dir", str(tmp_path / "cache_a"), processes=1)
    assert alone.returncode == 0, alone.stderr[-3000:]
    ranks = torchrun(*args, "--out", str(tmp_path / "ranks"), "--cache-dir", str(tmp_path / "cache_b"))
    assert ranks.returncode == 0, ranks.stderr[-3000:]
    assert ranks.stdout.count("kept checkpoint") == 1  # only rank 0 reports and writes
    one, two = _weights(tmp_path / "alone" / "last.pt"), _weights(tmp_path / "ranks" / "last.pt")
    assert list(one) == list(two)  # the synced batch norm leaves the usual state dict
    # float tolerance: the ranks sum their statistics and gradients in another order (measured: weights
    # within 1.5e-6, the stem's running variance, about 1e4, within 2e-7 of itself)
    import torch

    for key in one:
        assert torch.allclose(one[key].float(), two[key].float(), rtol=1e-5, atol=2e-5), key
    log_one = json.loads((tmp_path / "alone" / "train_log.json").read_text())
    log_two = json.loads((tmp_path / "ranks" / "train_log.json").read_text())
    assert log_two["processes"] == 2 and log_one["processes"] == 1
    for a, b in zip(log_one["history"], log_two["history"]):
        assert a["hard_background"] == b["hard_background"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
        assert a["score"] == pytest.approx(b["score"], abs=1e-6)


def test_detect_shares_the_scans_among_the_ranks(tiny_dataset, tiny_checkpoint, tmp_path):
    args = ["detect", str(tiny_dataset), "--checkpoint", str(tiny_checkpoint), "--device", "cpu", "-q",
            "--score-threshold", "0.1"]
    assert torchrun(*args, "--out", str(tmp_path / "alone"), processes=1).returncode == 0
    ranks = torchrun(*args, "--out", str(tmp_path / "ranks"))
    assert ranks.returncode == 0, ranks.stderr[-3000:]
    assert "[rank 0]" in ranks.stdout and "[rank 1]" in ranks.stdout  # both ranks scanned
    alone = sorted(p.parent.name for p in (tmp_path / "alone").glob("*/findings.json"))
    shared = sorted(p.parent.name for p in (tmp_path / "ranks").glob("*/findings.json"))
    assert len(alone) > 2 and shared == alone
    found = 0
    for name in alone:
        a = json.loads((tmp_path / "alone" / name / "findings.json").read_text())
        b = json.loads((tmp_path / "ranks" / name / "findings.json").read_text())
        assert a["findings"] == b["findings"]
        found += len(a["findings"])
    assert found  # there were findings to compare


def test_a_harvest_under_two_ranks_finishes_and_resumes_after_a_rank_dies(tiny_dataset, tmp_path):
    import sqlite3

    run = tmp_path / "run"
    args = ["harvest", str(tiny_dataset), "--out", str(run), "--preset", "tiny", "--rounds", "2", "--device", "cpu",
            "-q"]
    died = torchrun(*args, die_rank=1)  # rank 1 dies after saving its first volume of round 1's scan
    assert died.returncode != 0
    assert (run / "round_1" / "lpg" / "best.pt").is_file() and not (run / "harvested.pkl").exists()
    rerun = torchrun(*args)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert rerun.stdout.count("harvested lesions:") == 1  # the main rank reports
    for name in ("harvested.pkl", "hard_negatives.pkl", "completed_annotations.pkl", "report.md"):
        assert (run / name).is_file(), name
    db = sqlite3.connect(run / "ledger.sqlite")
    try:
        steps = db.execute("SELECT round, name FROM steps").fetchall()
        per_round = dict(db.execute("SELECT round, COUNT(*) FROM proposals GROUP BY round").fetchall())
    finally:
        db.close()
    expected = {(r, s) for r in (1, 2) for s in ("lpg", "scan", "operating_point", "verify", "lpc", "classify", "mine")}
    assert set(steps) >= expected and len(steps) == len(set(steps))  # every step once
    with open(run / "round_1" / "proposals.pkl", "rb") as handle:
        assert per_round[1] == sum(len(v) for v in pickle.load(handle).values())  # nothing lost or doubled
