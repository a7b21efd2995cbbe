"""LPG checkpoints: written atomically, read with ``torch.load(weights_only=True)``.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so loading it runs no
code: ``format``, ``model_config`` and ``preprocess`` (the dataclasses as dicts), ``state_dict``,
``stack`` (the 2D-to-3D stacking settings of the preset it was trained with, which ``propose``
uses by default), ``epoch``, ``score``, in ``best.pt`` the ``operating_point`` (the score at 0.5, 1, 2
and 4 false positives per validation volume, :func:`lesion_harvester.lpg.train.measure_operating_point`)
and, in ``last.pt``, the optimiser, schedule and random states for resuming.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lesion_harvester.config import PreprocessConfig, StackConfig, from_dict, to_dict
from lesion_harvester.detectors.base import DetectionModel
from lesion_harvester.errors import DataError
from lesion_harvester.io.torch_files import check_format, load_weights_only, written_with
from lesion_harvester.storage.atomic import atomic_write

FORMAT = "lesion-harvester-lpg/1"
OPERATING_RATES = (0.5, 1.0, 2.0, 4.0)  # false positives per volume at which an LPG's score is measured


def save_checkpoint(path: str | Path, payload: dict) -> None:
    """``torch.save`` through an atomic write: a reader never sees half a checkpoint."""
    with atomic_write(path) as handle:
        torch.save(payload, handle)


def load_checkpoint(path: str | Path, required: tuple[str, ...] = ()) -> dict:
    """An LPG checkpoint's payload, refused in one line unless it holds the ``required`` entries."""
    return check_format(load_weights_only(path, "checkpoint"), path, FORMAT, "LPG checkpoint", required)


def model_payload(model: DetectionModel, settings, pre: PreprocessConfig, stack: StackConfig, **extra) -> dict:
    """A checkpoint that describes itself: the detector's format, the versions it is written with, its
    settings (under its ``SETTINGS_KEY``: ``model_config`` for the LPG), the preprocessing and
    stacking settings, the weights and ``extra`` (epoch, training data, ...)."""
    return {"format": model.FORMAT, "written_with": written_with(), model.SETTINGS_KEY: to_dict(settings),
            "preprocess": to_dict(pre), "stack": to_dict(stack), "state_dict": model.weights().state_dict(), **extra}


def checkpoint_stack(path: str | Path, payload: dict | None = None) -> StackConfig:
    """The stacking settings stored with an LPG (the paper's defaults for checkpoints without them);
    ``payload``: the checkpoint already loaded from ``path``."""
    payload = payload if payload is not None else load_checkpoint(path)
    return from_dict(StackConfig, payload.get("stack") or {}, f"{path} stack")


def checkpoint_settings(payload: dict, key: str, path: str | Path) -> dict:
    """The settings section ``key`` of an LPG checkpoint, or a DataError naming the file."""
    section = payload.get(key)
    if not isinstance(section, dict):
        raise DataError(path, f"LPG checkpoint without its '{key}' settings (found {type(section).__name__})",
                        "it was not written by lesion-harvester train-lpg")
    return section


def rate_key(fp_per_volume: float) -> str:
    """How a rate names its entry of an operating point: 1.0 -> "1", 0.5 -> "0.5"."""
    return f"{float(fp_per_volume):g}"


def describe_rate(rate: str, entry: dict) -> str:
    """One rate of an operating point for people: "1 FP/volume: score >= 0.412 (measured 0.93 FP/volume,
    sensitivity 0.620)"."""
    if entry.get("keeps_none"):
        return f"{rate} FP/volume: none kept (the top-scoring finding, {entry['score']:.4g}, already makes more)"
    note = "" if entry.get("reached", True) else "; fewer false positives even at the lowest score measured"
    return (f"{rate} FP/volume: score >= {entry['score']:.4g} (measured {entry.get('fp_per_volume', 0):.2f} "
            f"FP/volume, sensitivity {entry.get('sensitivity', 0):.3f}{note})")


def checkpoint_operating_point(path: str | Path, payload: dict | None = None) -> dict | None:
    """The operating point stored with an LPG, None for one written before they were measured (or
    trained without validation lesions); a DataError naming the file for an entry that is not one.
    ``payload``: the checkpoint already loaded from ``path``."""
    payload = payload if payload is not None else load_checkpoint(path)
    point = payload.get("operating_point")
    if point is None:
        return None
    rates = point.get("rates") if isinstance(point, dict) else None
    if not isinstance(rates, dict) or not rates or not all(
            isinstance(v, dict) and isinstance(v.get("score"), (int, float)) for v in rates.values()):
        raise DataError(path, "damaged LPG checkpoint: its 'operating_point' holds no score per rate",
                        "measure it again: lesion-harvester info CKPT --measure-operating-point DATA")
    return point


def store_operating_point(path: str | Path, operating_point: dict, payload: dict | None = None) -> None:
    """Write ``operating_point`` into the checkpoint at ``path`` (atomically; everything else kept),
    replacing the one it held; ``payload``: the checkpoint already loaded from ``path``."""
    payload = dict(payload if payload is not None else load_checkpoint(path))
    payload["operating_point"] = operating_point
    save_checkpoint(path, payload)
