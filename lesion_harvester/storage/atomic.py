"""Atomic file and folder writes: a reader never sees a half-written output.

Each writer writes to a temporary sibling, then ``os.replace``s it onto the target, so a crash
leaves either the old file or the new one, never a truncated mix. Files that belong together (a
pickle and its CSV) are published together by :func:`atomic_files`: all or none of them change.

A failure to write (a full disk, a read-only file system, a file where a folder should be) ends in
a :class:`~lesion_harvester.errors.DataError` that names the output and the reason, e.g.
``"out/dets.pkl: cannot write: No space left on device"``; :func:`check_output_file` and
:func:`ensure_folder` find the avoidable ones before a command's long work starts.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

from lesion_harvester.errors import DataError

log = logging.getLogger(__name__)


# --- errors and checks ---------------------------------------------------------------------------------------
def _file_in_the_way(path: Path) -> Path | None:
    """The nearest existing ancestor of ``path`` when it is a file (so no folder can be made below it)."""
    for ancestor in path.parents:
        if ancestor.exists():
            return None if ancestor.is_dir() else ancestor
    return None


def write_error(path: str | Path, exc: OSError) -> DataError:
    """The user error for an OSError met while writing ``path``: the path and the system's reason."""
    path = Path(path)
    blocker = _file_in_the_way(path)
    if blocker is not None:
        return DataError(path, f"cannot write: {blocker} is a file, not a folder")
    if isinstance(exc, IsADirectoryError):
        return DataError(path, "cannot write: a folder of that name is in the way")
    return DataError(path, f"cannot write: {exc.strerror or exc}")


def _refuse_file_in_the_way(path: Path) -> None:
    """A file where one of ``path``'s folders should be is a :class:`DataError` naming ``path`` and the file."""
    blocker = _file_in_the_way(path)
    if blocker is not None:
        raise DataError(path, f"cannot write: {blocker} is a file, not a folder")


def ensure_folder(folder: str | Path) -> Path:
    """Create ``folder`` (and its parents) if needed; a file in the way or an unwritable place is a
    :class:`DataError` naming it."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise DataError(folder, "is a file; a folder is expected here", "choose another path")
    _refuse_file_in_the_way(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(folder, exc) from None
    return folder


def check_writable_folder(folder: str | Path) -> Path:
    """:func:`ensure_folder`, then make and remove a file in it: a read-only file system (or a folder
    the user may not write) is found now rather than after the work."""
    folder = ensure_folder(folder)
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-check.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise write_error(folder, exc) from None
    return folder


def check_output_file(path: str | Path) -> Path:
    """Check before the work that ``path`` can be written as a file: not an existing folder, in a
    folder that exists (or can be made) and is writable."""
    path = Path(path)
    if path.is_dir():
        raise DataError(path, "is a folder; the output must be a file", f"give a file name, e.g. {path / 'out.pkl'}")
    _refuse_file_in_the_way(path)
    check_writable_folder(path.parent)
    return path


# --- one file ------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file next to ``path``; on success move it onto ``path``.

    On an exception the temporary file is removed and ``path`` is left untouched; an OSError
    (e.g. a full disk) becomes a :class:`DataError` naming ``path``.
    """
    path = Path(path)
    fd, tmp_name = _temporary_beside(path, ".tmp")
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())  # a full disk may only show here (delayed allocation)
        os.chmod(tmp_name, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp_name, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        if isinstance(exc, OSError):
            raise write_error(path, exc) from None
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_write(path, "w") as handle:
        handle.write(text)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_write(path, "wb") as handle:
        handle.write(data)


# --- several files that belong together ---------------------------------------------------------------------
@contextlib.contextmanager
def atomic_files(paths: Sequence[str | Path]) -> Iterator[list[Path]]:
    """Write files that belong together (e.g. a pickle and its CSV) so that they change together.

    Yields one temporary path per target, in the target's folder; write each (with any writer).
    When the block succeeds every temporary file is renamed onto its target; if a rename fails,
    the targets already replaced get their old content back (or are removed if they had none),
    so the outputs are all old or all new. A write error inside the block names the target, not
    the temporary file. Only a kill between two renames (microseconds) can leave a mixed pair.
    """
    targets = [Path(p) for p in paths]
    temps = [_reserve_temporary(target) for target in targets]
    try:
        try:
            yield list(temps)
        except DataError as exc:
            raise _named_for_target(exc, temps, targets) from None
        except OSError as exc:
            raise write_error(targets[0], exc) from None
        _publish(list(zip(temps, targets)))
    finally:
        for tmp in temps:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


def _temporary_beside(target: Path, suffix: str) -> tuple[int, str]:
    """An open temporary file in ``target``'s folder (made if needed), named after it: (fd, path)."""
    _refuse_file_in_the_way(target)
    ensure_folder(target.parent)
    try:
        return tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    except OSError as exc:
        raise write_error(target, exc) from None


def _reserve_temporary(target: Path) -> Path:
    fd, name = _temporary_beside(target, ".new")
    os.close(fd)
    return Path(name)


def _named_for_target(exc: DataError, temps: list[Path], targets: list[Path]) -> DataError:
    """``exc`` with the temporary file it names replaced by the output it stands for."""
    for tmp, target in zip(temps, targets):
        if exc.path == str(tmp):
            return DataError(target, exc.problem, exc.fix)
    return exc


def _publish(pairs: list[tuple[Path, Path]]) -> None:
    """Rename each temporary file onto its target, all or none (see :func:`atomic_files`)."""
    backups: list[Path | None] = []
    replaced = 0
    try:
        for _, target in pairs:
            backups.append(_backup(target))
        for tmp, target in pairs:
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, target)
            replaced += 1
    except OSError as exc:
        for i in reversed(range(replaced)):
            _restore(pairs[i][1], backups[i])
        raise write_error(pairs[replaced][1], exc) from None
    finally:
        for backup in backups:
            if backup is not None:
                with contextlib.suppress(FileNotFoundError):
                    backup.unlink()


def _backup(target: Path) -> Path | None:
    """A second name for the target's current content (a hard link, else a copy), or None if it has none."""
    if not target.is_file():
        return None
    backup = target.parent / f".{target.name}.{os.getpid()}.old"
    with contextlib.suppress(FileNotFoundError):
        backup.unlink()
    try:
        try:
            os.link(target, backup)
        except OSError:  # a file system without hard links
            shutil.copy2(target, backup)
    except OSError as exc:
        raise write_error(target, exc) from None
    return backup


def _restore(target: Path, backup: Path | None) -> None:
    """Put the target's old content back (best effort: we are already handling an error)."""
    with contextlib.suppress(OSError):
        if backup is None:
            target.unlink()
        else:
            os.replace(backup, target)


# --- a whole folder -------------------------------------------------------------------------------------------
STAGING_SUFFIX = ".partial"


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Build a whole output folder in a temporary sibling, then rename it to ``path``.

    ``path`` must not exist yet (or be an empty folder): a finished dataset is never
    overwritten, and an interrupted run leaves no ``path`` behind. The sibling is a hidden
    ``.NAME.XXXX.partial`` folder; one left by a killed run is removed by the next run into the
    same ``path`` (each live run holds a lock on its own, so a concurrent run's is left alone).
    """
    path = Path(path)
    _require_new_folder(path)
    _refuse_file_in_the_way(path)
    ensure_folder(path.parent)
    _remove_abandoned_staging(path)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=STAGING_SUFFIX, dir=path.parent))
    except OSError as exc:
        raise write_error(path, exc) from None
    try:
        held = _lock_folder(tmp)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_error(path, exc) from None
    try:
        try:
            yield tmp
        except DataError as exc:  # name the output, not the staging folder
            raise _named_for_output(exc, tmp, path) from None
        except OSError as exc:  # e.g. a full disk under a writer that is not atomic (slices, figures)
            raise write_error(path, exc) from None
        try:
            _require_new_folder(path)  # another run may have finished it meanwhile
            os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700; give the usual permissions
            if path.exists():
                path.rmdir()
            os.replace(tmp, path)
        except OSError as exc:
            raise write_error(path, exc) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        os.close(held)


def _named_for_output(exc: DataError, staging: Path, path: Path) -> DataError:
    """``exc`` with a file of the staging folder it names renamed to its place in the output folder."""
    if exc.path is None or not Path(exc.path).is_relative_to(staging):
        return exc
    return DataError(path / Path(exc.path).relative_to(staging), exc.problem, exc.fix)


def _require_new_folder(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise DataError(path, "is a file; the output must be a new folder", "choose a new path")
    if path.is_dir() and any(path.iterdir()):
        raise DataError(path, "output folder already exists and is not empty", "choose a new path")


def _lock_folder(folder: Path) -> int:
    """An open descriptor of ``folder`` holding an exclusive flock: the sign that its builder lives
    (the kernel releases it when the process ends, however it ends)."""
    fd = os.open(folder, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def _remove_abandoned_staging(path: Path) -> None:
    """Remove the staging folders of ``path`` whose builder is gone (a killed run's)."""
    prefix = f".{path.name}."
    for folder in path.parent.iterdir():
        if not (folder.name.startswith(prefix) and folder.name.endswith(STAGING_SUFFIX) and folder.is_dir()):
            continue
        try:
            fd = _lock_folder(folder)
        except BlockingIOError:
            continue  # a live run is building it
        except OSError:
            continue  # vanished or unreadable: not ours to judge
        try:
            log.info("removing %s, left unfinished by an earlier run", folder)
            shutil.rmtree(folder, ignore_errors=True)
        finally:
            os.close(fd)
