"""Reading ``.pt`` files safely: ``torch.load(weights_only=True)`` only, so a file runs no code.

Writing goes through :func:`lesion_harvester.io.atomic.atomic_write` (``torch.save`` accepts the
open handle), so a reader never sees half a checkpoint.
"""

from __future__ import annotations

import importlib.metadata
import platform
from pathlib import Path

import torch

from lesion_harvester import __version__
from lesion_harvester.errors import DataError

# what a checkpoint keeps for resuming, not to describe it
RESUME_KEYS = ("state_dict", "optimizer", "scheduler", "rng_torch", "history")


def written_with() -> dict:
    """The versions a checkpoint is written with (recorded in it as ``written_with``)."""
    try:
        monai = importlib.metadata.version("monai")
    except importlib.metadata.PackageNotFoundError:
        monai = None
    return {"lesion_harvester": __version__, "torch": str(torch.__version__), "monai": monai,
            "python": platform.python_version()}


def check_format(payload, path: str | Path, expected: str, what: str) -> dict:
    """``payload`` if it is a dict of format ``expected`` (``name/N``); otherwise a DataError that says
    which format and version the file has, so that an older or newer checkpoint is recognised as such."""
    found = payload.get("format") if isinstance(payload, dict) else None
    if found == expected:
        return payload
    name = expected.split("/")[0]
    if isinstance(found, str) and found.split("/")[0] == name:
        versions = (payload.get("written_with") or {}).get("lesion_harvester", "an unknown version")
        raise DataError(path, f"{what} of format {found}, written by lesion-harvester {versions}; this version "
                              f"({__version__}) reads {expected}", "use the version that wrote it, or retrain")
    raise DataError(path, f"not a Lesion Harvester {what} (expected format {expected})")


def load_state(module: torch.nn.Module, payload: dict, path: str | Path, what: str) -> None:
    """``module.load_state_dict(payload["state_dict"])``, or a DataError naming the file and its versions."""
    try:
        module.load_state_dict(payload["state_dict"])
    except (RuntimeError, KeyError) as exc:
        versions = payload.get("written_with") or {}
        first = str(exc).strip().splitlines()[0][:200]
        raise DataError(path, f"the {what}'s weights do not fit the model its settings describe (written by "
                              f"lesion-harvester {versions.get('lesion_harvester', '?')}, torch "
                              f"{versions.get('torch', '?')}; {first})") from None


def checkpoint_summary(path: str | Path) -> dict:
    """What a checkpoint says about itself (everything but weights and resume state), plus its size."""
    payload = load_weights_only(path)
    if not isinstance(payload, dict):
        raise DataError(path, "not a Lesion Harvester checkpoint (not a dict)")
    summary = {k: v for k, v in payload.items() if k not in RESUME_KEYS}
    state = payload.get("state_dict")
    if isinstance(state, dict):
        summary["parameters"] = int(sum(t.numel() for t in state.values() if isinstance(t, torch.Tensor)))
    return summary


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
