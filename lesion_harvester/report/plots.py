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


TABLE3_COLOURS = {"MSCN": "tab:blue", "CenterNet": "tab:orange", "RetinaNet": "tab:green"}
TABLE3_STYLES = {"R": "-", "R+P": "--", "R+P+N": ":", "R+Pclean": (0, (5, 1, 1, 1)), "R+Pclean+Nclean": "-."}


def plot_table3(table: dict, fp_rates: tuple[str, ...], path: str | Path) -> None:
    """Table III as FROC points: sensitivity at ``fp_rates`` false positives per volume (log x), the
    mean over training seeds with their range shaded; a colour per detector, a line style per label set.

    ``table`` is what :func:`lesion_harvester.peers.table3.run_table3` returns."""
    fig = Figure(figsize=(9, 4.8))
    ax = fig.subplots()
    x = [float(r) for r in fp_rates]
    for row in table["rows"]:
        mean = [row["froc"][r]["mean"] for r in fp_rates]
        colour = TABLE3_COLOURS.get(row["detector"], "black")
        ax.plot(x, mean, marker="o", ms=3, color=colour, linestyle=TABLE3_STYLES.get(row["labels"], "-"),
                label=f"{row['detector']} {row['labels']} (AP {row['ap']['mean']:.3f})")
        if len(row["seeds"]) > 1:
            ax.fill_between(x, [row["froc"][r]["min"] for r in fp_rates], [row["froc"][r]["max"] for r in fp_rates],
                            color=colour, alpha=0.08)
    ax.set_xscale("log")
    ax.minorticks_off()  # the log axis's own minor labels would overlap the rates'
    ax.set_xticks(x, list(fp_rates))
    ax.set_ylim(0, 1)
    ax.set_xlabel("false positives per volume")
    ax.set_ylabel("sensitivity")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(f"Table III on {table['split']} ({table['volumes']} volumes, {table.get('lesions', '?')} lesions)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))  # beside the curves, not on them
    fig.subplots_adjust(left=0.09, right=0.66)
    save_figure(fig, path)


def plot_budget(curves: dict[str, dict[float, list[tuple[float, float]]]], path: str | Path,
                title: str = "labor budget") -> None:
    """Two panels against the share of V_H annotated (%): the harvest's gain in recall at 90% precision
    over the marks, and its harvested lesions' true precision; one line per strategy (the mean over
    seeds), its band the range over seeds. ``curves``: {strategy: {budget %: [(gain, precision), ...]}};
    a third element, the number of lesions harvested, is written beside each precision (the seeds'
    sum), since a precision of a handful of lesions says little."""
    fig = Figure(figsize=(10, 4))
    axes = fig.subplots(1, 2)
    for strategy, by_budget in curves.items():
        budgets = sorted(by_budget)
        for ax, k in zip(axes, (0, 1)):
            values = [np.array([v[k] for v in by_budget[b] if v[k] is not None], dtype=float) for b in budgets]
            mean = [v.mean() if len(v) else np.nan for v in values]
            line = ax.plot(budgets, mean, "o-", label=strategy)[0]
            ax.fill_between(budgets, [v.min() if len(v) else np.nan for v in values],
                            [v.max() if len(v) else np.nan for v in values], color=line.get_color(), alpha=0.2)
            if k == 1:
                for b, m in zip(budgets, mean):
                    counts = [v[2] for v in by_budget[b] if len(v) > 2 and v[2] is not None]
                    if counts and np.isfinite(m):
                        ax.annotate(f"n={sum(counts)}", (b, m), textcoords="offset points", xytext=(4, 4),
                                    fontsize=7, color=line.get_color())
    for ax, label in zip(axes, ("recall at 90% precision on V_H^test, gain over the marks",
                                "harvested lesions' true precision (all of V_H)")):
        ax.set_xlabel("volumes of V_H annotated fully (%)")
        ax.set_ylabel(label, fontsize=8)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    axes[1].axhline(0.9, color="grey", lw=0.8, ls="--")
    fig.suptitle(title)
    save_figure(fig, path)
