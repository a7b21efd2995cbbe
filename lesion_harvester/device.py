"""The one check of a ``--device`` request: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

Commands call :func:`resolve_device` before any work, so that ``--device cuda`` on a machine without
CUDA ends in one line, not in a traceback after the volumes are prepared.
"""

from __future__ import annotations

import re

from lesion_harvester.errors import ConfigError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")
DEVICE_CHOICES_HELP = "auto (CUDA when available, else the CPU), cpu, cuda or cuda:N (the N-th GPU)"

_CUDA = re.compile(r"cuda(?::(\d+))?")


def resolve_device(requested: str = "auto") -> str:
    """The torch device for ``requested``: ``auto`` -> ``cuda`` when CUDA is available, else ``cpu``;
    ``cpu``; ``cuda`` or ``cuda:N`` as given, if that GPU exists. Anything else, or a GPU that is not
    there, is a :class:`ConfigError`."""
    text = str(requested).strip()
    if text == "cpu":
        return "cpu"
    match = _CUDA.fullmatch(text)
    if text != "auto" and match is None:
        raise ConfigError(f"--device {requested}: unknown device; expected {', '.join(DEVICE_CHOICES)}")
    import torch  # here: resolving cpu needs no torch

    available = torch.cuda.is_available()
    if text == "auto":
        return "cuda" if available else "cpu"
    if not available:
        raise ConfigError(f"--device {text}: no CUDA device is available; use --device cpu or auto")
    if match.group(1) is not None:
        count = torch.cuda.device_count()
        if int(match.group(1)) >= count:
            raise ConfigError(f"--device {text}: no such CUDA device; this machine has {count} "
                              f"(cuda:0 to cuda:{count - 1})")
    return text
