"""User-facing errors.

Every error a user can cause by giving bad input (a file, a flag, a config) is a
:class:`LesionHarvesterError`. The CLI prints its message as one line and exits with code 2;
any other exception is a bug and keeps its traceback.

Messages name the file first, then the problem, then (where there is one) the fix:
``"DATA/Images_png/000001_01_01/012.png: 8-bit PNG; DeepLesion slices are 16-bit (HU + 32768)"``.
"""

from __future__ import annotations

from pathlib import Path


class LesionHarvesterError(Exception):
    """Base class of errors caused by the user's input, not by a bug."""


class DataError(LesionHarvesterError, ValueError):
    """A data file is missing, unreadable or inconsistent."""

    def __init__(self, path: str | Path | None, problem: str, fix: str | None = None):
        self.path = None if path is None else str(path)
        self.problem = problem
        self.fix = fix
        text = problem if path is None else f"{path}: {problem}"
        if fix:
            text = f"{text} ({fix})"
        # one line, whatever a file's content brought into the message (a CSV cell may hold a newline)
        super().__init__(text.replace("\r", "\\r").replace("\n", "\\n"))

    def __reduce__(self):  # so that one raised in a worker process reaches the parent whole
        return (type(self), (self.path, self.problem, self.fix))


class UnsafePickleError(DataError):
    """A pickle refers to a global that the restricted unpickler does not allow."""


class ConfigError(LesionHarvesterError, ValueError):
    """A configuration file or preset is invalid."""
