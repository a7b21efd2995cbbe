"""FROC and precision-recall curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from lesion_harvester.evaluation.metrics import FROC_FP_RATES
from lesion_harvester.io.figures import save_figure


def plot_froc(results: dict, path: str | Path, title: str = "FROC (per volume)") -> None:
    """Sensitivity against false positives per volume (log x), one curve per named result."""
    fig = Figure(figsize=(6, 4.5))
    ax = fig.subplots()
    for name, r in results.items():
        if len(r.fp_per_volume):
            ax.plot(np.maximum(r.fp_per_volume, 1e-3), r.recall, label=f"{name} (AP {r.ap:.3f})")
            ax.plot(list(FROC_FP_RATES), list(r.froc.values()), "o", ms=3, color=ax.lines[-1].get_color())
    ax.set_xscale("log")
    ax.set_xlim(0.1, 20)
    ax.set_ylim(0, 1)
    ax.set_xlabel("false positives per volume")
    ax.set_ylabel("sensitivity")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    save_figure(fig, path)


def plot_pr(results: dict, path: str | Path, title: str = "precision-recall", points: dict | None = None) -> None:
    """Precision against recall, one curve per named result; ``points`` adds single operating points."""
    fig = Figure(figsize=(6, 4.5))
    ax = fig.subplots()
    for name, r in results.items():
        if len(r.recall):
            ax.plot(r.recall, r.precision, label=name)
    for name, (recall, precision) in (points or {}).items():
        ax.plot([recall], [precision], "o", color="red", label=name)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.grid(True, alpha=0.3)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower left")
    save_figure(fig, path)
