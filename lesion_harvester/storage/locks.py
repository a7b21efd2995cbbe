"""Exclusive locks on outputs: one command at a time writes a run folder, a training folder or a file.

A lock is a small file (``RUN/.lock``, ``CKPT_DIR/.lock``, ``.DETS.pkl.lock`` beside a file output;
named in :mod:`lesion_harvester.paths`) held with ``fcntl.flock`` while the command runs. It records
the holder's pid, host, start time and command line, so that a second command on the same output
refuses at once with a message naming the holder. The kernel drops a flock when its process ends,
however it ends (SIGKILL included), so a lock file left by a dead process is taken over by the next
command: the file's content is only a note, the flock is the lock. The holder removes the file when
it is done. On a shared file system (a run folder on NFS for a multi-node job) flock needs a client
that passes it to the server, as Linux NFS clients do.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import shlex
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

from lesion_harvester.errors import DataError
from lesion_harvester.storage.atomic import ensure_folder, write_error


class OutputLocked(DataError):
    """The output is locked by another running command."""


class OutputLock:
    """An exclusive lock on ``output`` through the lock file ``path`` (use as a context manager)."""

    def __init__(self, path: str | Path, output: str | Path):
        self.path = Path(path)
        self.output = Path(output)
        self._fd: int | None = None

    def acquire(self) -> OutputLock:
        """Take the lock, or raise :class:`OutputLocked` naming its holder; never waits."""
        ensure_folder(self.path.parent)
        while True:
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_note(fd)
                os.close(fd)
                raise OutputLocked(self.output, _in_use(holder),
                                   f"wait for it to end, or choose another output; lock file {self.path}") from None
            if _same_file(fd, self.path):
                break
            # the holder released and removed the file between our open and our flock: open the new one
            os.close(fd)
        self._fd = fd
        try:
            _write_note(fd)
        except OSError as exc:
            self.release()
            raise write_error(self.path, exc) from None
        return self

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise write_error(self.path, exc) from None

    def release(self) -> None:
        """Remove the lock file and release the lock (removing first, so that nobody takes a lock on
        a file that is about to disappear without noticing: see the check in :meth:`acquire`)."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            if _same_file(self._fd, self.path):
                self.path.unlink()
        os.close(self._fd)
        self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()


@contextlib.contextmanager
def locked_output(path: str | Path, output: str | Path, take: bool = True) -> Iterator[OutputLock | None]:
    """Hold the lock of ``output`` while the block runs; ``take=False`` holds nothing (a torchrun
    rank other than 0: the ranks of one command share its outputs, and rank 0 holds the lock for all)."""
    if not take:
        yield None
        return
    with OutputLock(path, output) as lock:
        yield lock


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` is still the file open as ``fd``."""
    try:
        here, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _write_note(fd: int) -> None:
    """Who holds the lock: pid, host, since when (UTC) and the command line."""
    note = {"pid": os.getpid(), "host": socket.gethostname(),
            "since": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
            "command": shlex.join(sys.argv)}
    data = json.dumps(note).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def _read_note(fd: int) -> dict:
    try:
        note = json.loads(os.pread(fd, 65536, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return note if isinstance(note, dict) else {}


def _in_use(holder: dict) -> str:
    if "pid" not in holder:  # the holder has not written its note yet
        return "in use by another lesion-harvester command"
    return (f"in use by another lesion-harvester command: pid {holder['pid']} on {holder.get('host', '?')} "
            f"since {holder.get('since', '?')}")
