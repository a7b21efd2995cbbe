"""Reading ``.pt`` files safely: ``torch.load(weights_only=True)`` only, so a file runs no code.

Writing goes through :func:`lesion_harvester.storage.atomic.atomic_write` (``torch.save`` accepts the
open handle), so a reader never sees half a checkpoint.
"""

from __future__ import annotations

import importlib.metadata
import platform
import re
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


def check_format(payload, path: str | Path, expected: str, what: str, required: tuple[str, ...] = ()) -> dict:
    """``payload`` if it is a dict of format ``expected`` (``name/N``) holding the ``required`` keys;
    otherwise a DataError that says which format and version the file has (so that an older or newer
    checkpoint is recognised as such) or which entry it lacks."""
    found = payload.get("format") if isinstance(payload, dict) else None
    if found == expected:
        missing = [key for key in required if key not in payload]
        if missing:
            raise DataError(path, f"damaged {what}: no {', '.join(repr(k) for k in missing)} entry")
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
    except (RuntimeError, KeyError, TypeError, AttributeError) as exc:
        versions = payload.get("written_with") or {}
        first = _first_problem(exc)
        raise DataError(path, f"the {what}'s weights do not fit the model its settings describe (written by "
                              f"lesion-harvester {versions.get('lesion_harvester', '?')}, torch "
                              f"{versions.get('torch', '?')}; {first})") from None


def _first_problem(exc: Exception) -> str:
    """The first specific line of a ``load_state_dict`` error (torch's first line only says that there
    are errors), shortened."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    specific = [line for line in lines if not line.startswith("Error(s) in loading")]
    text = (specific or lines or [type(exc).__name__])[0]
    return text if len(text) <= 200 else text[:197] + "..."


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

    A missing, empty, truncated or foreign file, or one that holds other objects (which could run
    code as they load), is a :class:`DataError` naming the file and ``what`` it should be.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, f"{what} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataError(path, _load_problem(exc, path, what)) from None


ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive


def _load_problem(exc: Exception, path: Path, what: str) -> str:
    """Why ``torch.load`` failed, in the user's terms. Torch's own text for a refused object advises
    loading the file unrestricted, which would run whatever code it carries: it is never passed on."""
    text = str(exc)
    size = path.stat().st_size
    if size == 0:
        return f"not a loadable {what}: empty file"
    with open(path, "rb") as handle:
        is_zip = handle.read(len(ZIP_MAGIC)) == ZIP_MAGIC
    found = re.search(r"GLOBAL ([\w.]+)", text)
    # a whole archive whose pickle asks for something else than plain data (not bytes that are no pickle)
    refused = found or (is_zip and "Weights only load failed" in text and "Unsupported operand" not in text)
    if refused:
        held = f"'{found.group(1)}'" if found else "objects other than tensors, numbers, strings, lists and dicts"
        return (f"not a loadable {what}: refused, the file holds {held}, which a {what} must not hold (loading "
                "such objects could run code)")
    if is_zip:
        return f"not a loadable {what}: truncated or damaged (torch cannot read this zip archive of {size:,} bytes)"
    return f"not a loadable {what}: torch cannot read these {size:,} bytes (truncated, or not a PyTorch file)"
