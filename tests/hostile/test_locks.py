"""Hostile concurrency: two commands on one output, a lock left by a killed process, torchrun's ranks;
and a harvest round whose examples cannot train the LPC.

The lock is ``fcntl.flock`` on a file (``RUN/.lock``, ``CKPT_DIR/.lock``, ``.DETS.pkl.lock``) that
names its holder; the kernel releases it when the holder dies, so a killed command's lock is taken
over by the next one.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lesion_harvester.cli.main import main
from lesion_harvester.distributed import Distributed
from lesion_harvester.paths import RunLayout, TrainLayout, output_lock
from lesion_harvester.storage.locks import OutputLock, OutputLocked, locked_output
from tests.hostile.common import one_line_error

ROOT = Path(__file__).resolve().parents[2]


def _no_work(*_args, **_kwargs):
    raise AssertionError("the work started on a locked output")


def _wait_for_group_exit(pgid: int, timeout_s: float = 30.0) -> None:
    """Wait until no live process is left in process group ``pgid``: a killed harvest's children (forked
    with its lock file open) hold the lock until they are gone too, some milliseconds after their parent."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        alive = False
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:  # gone meanwhile
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":  # its group, and not a zombie (which holds no file)
                alive = True
                break
        if not alive:
            return
        time.sleep(0.02)


def _note(path: Path) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


# --- the lock itself ------------------------------------------------------------------------------------------
def test_a_second_lock_is_refused_naming_its_holder_and_released_locks_leave_no_file(tmp_path):
    out = tmp_path / "run"
    path = RunLayout(out).lock
    with OutputLock(path, out):
        note = _note(path)
        assert note["pid"] == os.getpid() and note["host"] == socket.gethostname() and note["since"]
        with pytest.raises(OutputLocked) as refused:
            OutputLock(path, out).acquire()
        text = str(refused.value)
        assert text.startswith(f"{out}: in use by another lesion-harvester command: pid {os.getpid()} on "
                               f"{socket.gethostname()} since ")
        assert str(path) in text and "\n" not in text
    assert not path.exists()
    with OutputLock(path, out):  # free again
        assert path.is_file()


def test_only_rank_0_takes_the_lock_so_the_ranks_of_one_command_never_exclude_each_other(tmp_path):
    out = tmp_path / "dets.pkl"
    with locked_output(output_lock(out), out, take=True) as rank0:
        assert rank0 is not None and rank0.held
        with locked_output(output_lock(out), out, take=False) as rank1:
            assert rank1 is None
    assert not output_lock(out).exists()


def test_a_non_main_rank_trains_and_scans_while_rank_0_holds_the_lock(tmp_path, monkeypatch):
    """train_lpg and propose on rank 1 of 2 run into outputs that rank 0 (here: this test) has locked."""
    from lesion_harvester.config import load_preset
    from lesion_harvester.lpg import propose, train

    preset = load_preset("tiny")
    monkeypatch.setattr(train, "_train", lambda *args, **kwargs: "trained")
    monkeypatch.setattr(propose, "_scan_to_file", lambda *args, **kwargs: "scanned")
    rank1 = Distributed(rank=1, world_size=2)
    ckpt, dets = TrainLayout(tmp_path / "ckpt"), tmp_path / "dets.pkl"
    with OutputLock(ckpt.lock, ckpt.root), OutputLock(output_lock(dets), dets):
        assert train.train_lpg("DATA", ckpt.root, preset, device="cpu", dist=rank1) == "trained"
        assert propose.scan_to_file("DATA", None, None, None, dets, "model", [], dist=rank1) == "scanned"
        with pytest.raises(OutputLocked):  # while rank 0 of another command is refused
            train.train_lpg("DATA", ckpt.root, preset, device="cpu")


# --- the commands ---------------------------------------------------------------------------------------------
def test_a_second_harvest_refuses_at_once_and_a_killed_ones_lock_is_taken_over(tiny_dataset, tmp_path, capsys):
    run = tmp_path / "run"
    lock = RunLayout(run).lock
    first = subprocess.Popen([sys.executable, "-m", "lesion_harvester.cli.main", "harvest", str(tiny_dataset),
                              "--out", str(run), "--preset", "tiny", "--rounds", "1", "-q"], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and first.poll() is None and _note(lock).get("pid") != first.pid:
            time.sleep(0.05)
        assert _note(lock).get("pid") == first.pid, "the first harvest did not take the lock"
        started = time.time()
        assert main(["harvest", "-q", str(tiny_dataset), "--out", str(run), "--preset", "tiny", "--rounds", "1"]) == 2
        assert time.time() - started < 15  # at once: the tester's second harvest crashed after 39 s
        one_line_error(capsys, f"{run}: in use by another lesion-harvester command: pid {first.pid} on "
                               f"{socket.gethostname()} since ")
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        _wait_for_group_exit(first.pid)
    assert _note(lock)["pid"] == first.pid  # the dead process's lock file is still there ...
    with OutputLock(lock, run):  # ... and is taken over
        assert _note(lock)["pid"] == os.getpid()


def test_train_lpg_and_propose_refuse_a_locked_output(tiny_dataset, tiny_checkpoint, tmp_path, capsys,
                                                      monkeypatch):
    monkeypatch.setattr("lesion_harvester.lpg.train._train", _no_work)
    monkeypatch.setattr("lesion_harvester.lpg.propose.scan_volumes", _no_work)
    ckpt = TrainLayout(tmp_path / "ckpt")
    dets = tmp_path / "dets.pkl"
    with OutputLock(ckpt.lock, ckpt.root), OutputLock(output_lock(dets), dets):
        assert main(["train-lpg", "-q", str(tiny_dataset), "--out", str(ckpt.root), "--preset", "tiny"]) == 2
        one_line_error(capsys, f"{ckpt.root}: in use by another lesion-harvester command: pid {os.getpid()}")
        assert main(["propose", "-q", str(tiny_dataset), "--checkpoint", str(tiny_checkpoint), "--out", str(dets),
                     "--split", "detection_test"]) == 2
        one_line_error(capsys, f"{dets}: in use by another lesion-harvester command: pid {os.getpid()}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"] and list(ckpt.root.iterdir()) == []


def test_a_harvest_rank_other_than_0_opens_a_run_that_rank_0_holds(tiny_dataset, tmp_path, monkeypatch):
    from lesion_harvester.config import load_preset
    from lesion_harvester.harvest import rounds

    preset = load_preset("tiny")
    rounds.open_run(tiny_dataset, tmp_path / "run", preset, progress=False).close()  # as rank 0 makes it
    monkeypatch.setattr(Distributed, "barrier", lambda self: None)
    monkeypatch.setattr(rounds, "run_harvest", lambda run, n: None)
    with OutputLock(RunLayout(tmp_path / "run").lock, tmp_path / "run"):  # rank 0 holds it
        rounds.harvest(tiny_dataset, tmp_path / "run", preset, device="cpu", progress=False,
                       dist=Distributed(rank=1, world_size=2))


# --- a harvest round without an LPC ----------------------------------------------------------------------------
def test_lpc_shortfall_names_the_fold_without_negatives():
    from lesion_harvester.harvest.steps import lpc_shortfall
    from lesion_harvester.lpc.api import LPCExamples
    from lesion_harvester.structures import Tracklet

    t = Tracklet.single_slice(3, [1.0, 1.0, 9.0, 9.0], 0.9)
    one_volume = LPCExamples([("a", t), ("a", t)], np.array([0, 0]), [("h", t)] * 4)
    assert lpc_shortfall(one_volume, [["a"], []]) == ("cannot train the LPC: 4 positive and 0 negative proposals "
                                                      "to train fold 1 of 2 on")
    assert lpc_shortfall(one_volume, [[]]) is None  # one model on everything: both kinds
    two_volumes = LPCExamples([("a", t), ("b", t)], np.array([0, 0]), [("h", t)])
    assert lpc_shortfall(two_volumes, [["a"], ["b"]]) is None
    assert lpc_shortfall(LPCExamples([], np.zeros(0, dtype=np.int64), []), [[]]) == (
        "cannot train the LPC: 0 positive and 0 negative proposals")


@pytest.mark.slow
def test_a_tiny_harvest_whose_lpc_cannot_train_goes_on_with_the_lpg_alone(tmp_path, capsys):
    """6 volumes, seed 0: V_M is one volume whose proposals are all false positives, so the fold that
    holds it out has positives only; the round ranks by s = s_g and the report says so."""
    import sqlite3

    data, run = tmp_path / "data", tmp_path / "run"
    assert main(["synth", "-q", str(data), "--preset", "tiny", "--volumes", "6", "--seed", "0"]) == 0
    assert main(["harvest", "-q", str(data), "--out", str(run), "--preset", "tiny", "--rounds", "1"]) == 0
    err = capsys.readouterr().err
    found = re.search(r"(cannot train the LPC: (\d+) positive and 0 negative proposals to train fold 1 of 2 on); "
                      r"this round ranks its proposals by the LPG alone \(s = s_g, as if s_c = 1\)", err)
    assert found and int(found.group(2)) > 0, err
    warning = found.group(1)  # the count of positives is the data's
    assert warning in (run / "harvest.log").read_text()
    report = json.loads((run / "report.json").read_text())
    assert report["rounds"][0]["no_lpc_because"] == warning
    assert f"**Round 1 had no LPC:** {warning}" in (run / "report.md").read_text()
    assert "Fig. 5b" not in (run / "report.md").read_text()  # no LPC variants trained, none drawn or linked
    assert not (run / "fig5b_lpc_variants.png").exists()
    db = sqlite3.connect(run / "ledger.sqlite")
    try:
        steps = {name: json.loads(info) for name, info in db.execute("SELECT name, info FROM steps WHERE round = 1")}
        objectness, scores = zip(*db.execute("SELECT objectness, score FROM proposals WHERE round = 1 "
                                             "AND score IS NOT NULL"))
    finally:
        db.close()
    assert steps["lpc"]["skipped"] == warning and steps["lpc_variants"] == {"skipped": warning}
    assert {"classify", "mine"} <= set(steps) and not (run / "round_1" / "lpc").exists()
    assert np.allclose(objectness, scores)  # s = s_g
