"""Hostile outputs: unwritable, full or colliding output paths, outputs that must change together, and
the hidden folder a killed ``synth`` leaves.

Every failure must be one line on stderr naming the path and the problem, exit code 2, no traceback,
checked before the long work where it can be, and leave the previous output intact.

Tests run as root here, where a read-only folder (chmod) does not stop writes; an unwritable place
is made with a regular file where a folder should be (``file.txt/sub``), and a read-only file system
and a full disk by making the system calls fail (``EROFS`` from the write check, ``ENOSPC`` from
``os.fsync``, where a full disk shows with delayed allocation).
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from lesion_harvester.cli.main import main
from lesion_harvester.errors import DataError
from lesion_harvester.io.annotations import read_tracklets
from lesion_harvester.storage import atomic
from tests.hostile.common import one_line_error

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def file_in_the_way(tmp_path) -> Path:
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    return blocker


def _no_work(*_args, **_kwargs):
    raise AssertionError("the long work started before the output was checked")


def _full_disk_in(folder: Path):
    """An os.fsync that fails with ENOSPC for files written directly in ``folder`` (the outputs)."""
    real = os.fsync

    def fsync(fd: int) -> None:
        if Path(os.readlink(f"/proc/self/fd/{fd}")).parent == folder:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)

    return fsync


# --- 1. unwritable and colliding output paths: refused before the work ---------------------------------------
def test_synth_under_a_file_and_onto_a_file(tmp_path, file_in_the_way, capsys, monkeypatch):
    monkeypatch.setattr("lesion_harvester.synth.dataset._work", _no_work)
    out = file_in_the_way / "sub"
    assert main(["synth", "-q", str(out), "--preset", "tiny", "--volumes", "4"]) == 2
    one_line_error(capsys, str(out), "file.txt is a file, not a folder")
    assert main(["synth", "-q", str(file_in_the_way), "--preset", "tiny", "--volumes", "4"]) == 2
    one_line_error(capsys, str(file_in_the_way), "is a file")
    assert file_in_the_way.read_text() == "not a folder"


def test_train_lpg_and_harvest_check_their_folder_first(tiny_dataset, tmp_path, file_in_the_way, capsys,
                                                         monkeypatch):
    monkeypatch.setattr("lesion_harvester.lpg.train._train", _no_work)
    monkeypatch.setattr("lesion_harvester.harvest.rounds.run_harvest", _no_work)
    for out in (file_in_the_way / "ckpt", file_in_the_way):
        assert main(["train-lpg", "-q", str(tiny_dataset), "--out", str(out), "--preset", "tiny"]) == 2
        one_line_error(capsys, str(out), "is a file")
    for out in (file_in_the_way / "run", file_in_the_way):
        assert main(["harvest", "-q", str(tiny_dataset), "--out", str(out), "--preset", "tiny"]) == 2
        one_line_error(capsys, str(out), "is a file")
    assert file_in_the_way.read_text() == "not a folder"


def test_propose_refuses_a_colliding_output_before_the_scan(tiny_dataset, tiny_checkpoint, tmp_path,
                                                            file_in_the_way, capsys, monkeypatch):
    monkeypatch.setattr("lesion_harvester.lpg.propose.scan_volumes", _no_work)
    base = ["propose", "-q", str(tiny_dataset), "--checkpoint", str(tiny_checkpoint), "--split", "detection_test"]
    folder = tmp_path / "a_folder"
    folder.mkdir()
    assert main(base + ["--out", str(folder)]) == 2  # today found only after the whole scan
    one_line_error(capsys, str(folder), "is a folder; the output must be a file")
    (tmp_path / "dets.csv").mkdir()  # the CSV beside the pickle cannot be written
    assert main(base + ["--out", str(tmp_path / "dets.pkl")]) == 2
    one_line_error(capsys, str(tmp_path / "dets.csv"), "is a folder")
    assert main(base + ["--out", str(tmp_path / "dets.csv")]) == 2  # the pickle and its CSV would be one file
    one_line_error(capsys, "dets.csv", "cannot be named .csv")
    assert main(base + ["--out", str(file_in_the_way / "dets.pkl")]) == 2
    one_line_error(capsys, "file.txt is a file, not a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_folder", "dets.csv", "file.txt"]  # nothing written


def test_a_read_only_file_system_is_found_before_the_work(tiny_dataset, tiny_checkpoint, tmp_path, capsys,
                                                          monkeypatch):
    """EROFS from the write check (chmod would not stop root): propose stops before scanning."""
    monkeypatch.setattr("lesion_harvester.lpg.propose.scan_volumes", _no_work)
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    real = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):  # noqa: A002 - tempfile's own name
        if dir is not None and Path(dir) == read_only:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(atomic.tempfile, "mkstemp", mkstemp)
    assert main(["propose", "-q", str(tiny_dataset), "--checkpoint", str(tiny_checkpoint), "--split", "detection_test",
                 "--out", str(read_only / "dets.pkl")]) == 2
    one_line_error(capsys, str(read_only), "cannot write: Read-only file system")
    assert list(read_only.iterdir()) == []


# --- 1. a full disk while writing: one line, the previous output intact -------------------------------------
def test_a_full_disk_keeps_the_previous_proposals(tiny_dataset, tiny_checkpoint, tmp_path, capsys, monkeypatch):
    out_dir = tmp_path / "out"
    out = out_dir / "dets.pkl"
    base = ["propose", "-q", str(tiny_dataset), "--checkpoint", str(tiny_checkpoint), "--split", "detection_test",
            "--out", str(out)]
    assert main(base) == 0
    before = out.read_bytes(), out.with_suffix(".csv").read_bytes()
    capsys.readouterr()
    monkeypatch.setattr(os, "fsync", _full_disk_in(out_dir))
    assert main(base + ["--score-threshold", "0.5"]) == 2
    one_line_error(capsys, str(out), "No space left on device")
    assert (out.read_bytes(), out.with_suffix(".csv").read_bytes()) == before
    assert sorted(p.name for p in out_dir.iterdir()) == ["dets.csv", "dets.pkl", "dets.pkl.partial"]
    monkeypatch.undo()
    # space again: the same command publishes from its partial folder (nothing is scanned twice)
    assert main(base + ["--score-threshold", "0.5"]) == 0
    assert sorted(p.name for p in out_dir.iterdir()) == ["dets.csv", "dets.pkl"]


def test_a_full_disk_during_training_keeps_the_last_checkpoint(tiny_dataset, tmp_path, capsys, monkeypatch):
    import torch

    out = tmp_path / "ckpt"
    real = os.fsync
    saves = []

    def fsync(fd: int) -> None:  # the disk fills up at the second epoch's last.pt
        if Path(os.readlink(f"/proc/self/fd/{fd}")).name.startswith(".last.pt."):
            saves.append(fd)
            if len(saves) == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    assert main(["train-lpg", "-q", str(tiny_dataset), "--out", str(out), "--preset", "tiny"]) == 2
    one_line_error(capsys, str(out / "last.pt"), "No space left on device")
    assert torch.load(out / "last.pt", weights_only=False)["epoch"] == 0  # epoch 1's, whole
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp") or p.name == ".lock"]


def test_a_full_disk_while_synth_writes_slices(tmp_path, capsys, monkeypatch):
    def full(path, *_args, **_kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr("lesion_harvester.synth.dataset.write_png_hu", full)
    out = tmp_path / "data"
    assert main(["synth", "-q", str(out), "--preset", "tiny", "--volumes", "4"]) == 2
    one_line_error(capsys, str(out), "No space left on device")
    assert list(tmp_path.iterdir()) == []  # neither OUT nor its hidden staging folder


def test_a_full_disk_under_an_atomic_writer_of_synth_names_the_output_file(tmp_path, capsys, monkeypatch):
    """The error names OUT/splits.json, not the hidden staging folder it was being written in."""
    real = os.fsync

    def fsync(fd: int) -> None:
        if Path(os.readlink(f"/proc/self/fd/{fd}")).name.startswith(".splits.json."):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    out = tmp_path / "data"
    assert main(["synth", "-q", str(out), "--preset", "tiny", "--volumes", "4"]) == 2
    one_line_error(capsys, f"{out / 'splits.json'}: cannot write: No space left on device")
    assert list(tmp_path.iterdir()) == []


# --- 2. outputs that agree: the pickle and its CSV change together ---------------------------------------------
def _fail_replace_onto(suffix: str):
    real = os.replace

    def replace(src, dst, **kwargs):
        if str(dst).endswith(suffix) and not Path(src).name.endswith(".tmp"):  # the publishing rename
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real(src, dst, **kwargs)

    return replace


def test_propose_publishes_its_pickle_and_csv_together(tiny_dataset, tiny_checkpoint, tmp_path, capsys,
                                                       monkeypatch):
    out = tmp_path / "dets.pkl"
    base = ["propose", "-q", str(tiny_dataset), "--checkpoint", str(tiny_checkpoint), "--split", "detection_test",
            "--out", str(out)]
    assert main(base) == 0
    old = out.read_bytes(), out.with_suffix(".csv").read_bytes()
    capsys.readouterr()
    monkeypatch.setattr(os, "replace", _fail_replace_onto(".csv"))  # the second rename fails
    assert main(base + ["--score-threshold", "0.5"]) == 2
    one_line_error(capsys, "dets.csv", "cannot write")
    assert (out.read_bytes(), out.with_suffix(".csv").read_bytes()) == old  # the old pair, both
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary or backup left
    monkeypatch.undo()
    assert main(base + ["--score-threshold", "0.5"]) == 0
    new = read_tracklets(out)
    rows = out.with_suffix(".csv").read_text().strip().splitlines()[1:]
    assert len(rows) == sum(len(v) for v in new.values())  # the new pair, both
    assert out.read_bytes() != old[0]


def test_atomic_files_all_or_none(tmp_path, monkeypatch):
    a, b = tmp_path / "a.pkl", tmp_path / "a.csv"
    monkeypatch.setattr(os, "replace", _fail_replace_onto(".csv"))
    with pytest.raises(DataError, match="a.csv: cannot write"):
        with atomic.atomic_files([a, b]) as (ta, tb):
            ta.write_text("new a")
            tb.write_text("new b")
    assert list(tmp_path.iterdir()) == []  # no old pair: none of the new one either
    monkeypatch.undo()
    with atomic.atomic_files([a, b]) as (ta, tb):
        ta.write_text("a1")
        tb.write_text("b1")
    assert (a.read_text(), b.read_text()) == ("a1", "b1") and sorted(tmp_path.iterdir()) == [b, a]


# --- 2. the hidden folder of a killed synth ---------------------------------------------------------------------
def test_a_killed_synth_leaves_a_folder_the_next_run_removes(tmp_path, capsys):
    out = tmp_path / "data"
    command = [sys.executable, "-m", "lesion_harvester.cli.main", "synth", str(out), "--preset", "tiny",
               "--volumes", "6", "-q"]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 120
    staging: list[Path] = []
    while time.time() < deadline and proc.poll() is None and not staging:  # kill it while it builds
        staging = [p for p in tmp_path.iterdir() if p.name.endswith(".partial") and (p / "Images_png").is_dir()]
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert staging and staging[0].is_dir() and not out.exists()  # what a killed run leaves
    assert main(["synth", "-q", str(out), "--preset", "tiny", "--volumes", "4"]) == 0
    assert (out / "splits.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # the abandoned folder removed


def test_synth_leaves_a_live_runs_folder_alone(tmp_path):
    """A staging folder whose builder still runs (it holds the folder's flock) is kept; one nobody holds
    (a killed run's) is removed."""
    out = tmp_path / "data"
    live, dead = tmp_path / ".data.live0000.partial", tmp_path / ".data.dead0000.partial"
    live.mkdir()
    dead.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, time\n"
        f"fd = os.open({str(live)!r}, os.O_RDONLY); fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "print('held', flush=True); time.sleep(60)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["synth", "-q", str(out), "--preset", "tiny", "--volumes", "4"]) == 0
        assert live.is_dir() and not dead.exists() and (out / "splits.json").is_file()
    finally:
        holder.kill()
        holder.wait()


def test_a_full_disk_under_the_ledger_is_one_line_and_other_sqlite_errors_stay_bugs(tmp_path):
    import sqlite3

    from lesion_harvester.cli.harvest_cmd import ledger_error

    ledger = tmp_path / "run" / "ledger.sqlite"
    full = ledger_error(ledger, sqlite3.OperationalError("database or disk is full"))
    assert isinstance(full, DataError) and str(full) == f"{ledger}: cannot write: database or disk is full"
    bug = sqlite3.OperationalError("no such table: proposals")
    assert ledger_error(ledger, bug) is bug
