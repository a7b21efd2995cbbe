"""Git-LFS pointers: the small text files a clone without Git LFS (or an archive of one) holds in place
of the images. Every reader names them as such; parsed as images they would read as damaged files."""

from __future__ import annotations

from pathlib import Path

from lesion_harvester.errors import DataError

LFS_POINTER = b"version https://git-lfs.github.com/spec/"  # how a Git-LFS pointer file starts
LFS_POINTER_MAX_BYTES = 1024  # pointers are about 130 bytes
LFS_FIX = "a clone without Git LFS holds these in place of the data: fetch it with `git lfs pull`"


def git_lfs_pointer(path: Path) -> bool:
    """Whether ``path`` is a Git-LFS pointer: the small text file that a clone without Git LFS (or an
    archive of one) holds in place of an image."""
    try:
        if path.stat().st_size > LFS_POINTER_MAX_BYTES:
            return False
        with open(path, "rb") as handle:
            return handle.read(len(LFS_POINTER)) == LFS_POINTER
    except OSError:
        return False


def check_not_lfs_pointer(path: Path) -> None:
    """A DataError naming a Git-LFS pointer as such (a reader would call it damaged)."""
    if git_lfs_pointer(path):
        raise DataError(path, f"a Git-LFS pointer ({path.stat().st_size} bytes of text), not the image", LFS_FIX)
