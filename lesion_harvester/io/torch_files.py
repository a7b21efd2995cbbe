"""Reading ``.pt`` files safely: ``torch.load(weights_only=True)`` only, so a file runs no code.

Writing goes through :func:`lesion_harvester.io.atomic.atomic_write` (``torch.save`` accepts the
open handle), so a reader never sees half a checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lesion_harvester.errors import DataError


def load_weights_only(path: str | Path, what: str = "checkpoint"):
    """The contents of a ``.pt`` file (tensors, numbers, strings, lists, dicts), on the CPU.

    A missing or unreadable file is a :class:`DataError` naming the file and ``what`` it should be.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, f"{what} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataError(path, f"not a loadable {what} ({type(exc).__name__}: {exc})") from None
