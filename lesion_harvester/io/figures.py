"""Figures to PNG files, atomically.

Figures are built with matplotlib's object API (``matplotlib.figure.Figure``), never pyplot, so
that making one never switches the backend of a notebook or a GUI session that imports us.
"""

from __future__ import annotations

import io
from pathlib import Path

from matplotlib.figure import Figure

from lesion_harvester.storage.atomic import atomic_write_bytes


def save_figure(fig: Figure, path: str | Path, dpi: int = 110) -> None:
    """Save a matplotlib figure as PNG, atomically."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())
