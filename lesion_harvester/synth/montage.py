"""The synthetic dataset's ``montage.png``: a person should see at a glance that the data and the
boxes look right."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from lesion_harvester.geometry.display import DISPLAY_WINDOWS_HU, window_image
from lesion_harvester.io.figures import save_figure
from lesion_harvester.io.png16 import read_png_hu


def synth_montage(root: Path, volumes, out_png: Path, n_panels: int = 12) -> None:
    """Key slices of a few synthetic volumes (``SynthVolume``s written under ``root``) with every
    lesion's box: green marked, yellow unmarked."""
    panels = []
    for v in volumes:
        for lesion in v.lesions:
            panels.append((v, lesion))
            break
        if len(panels) >= n_panels:
            break
    cols = 4
    rows = max(1, int(np.ceil(len(panels) / cols)))
    fig = Figure(figsize=(4 * cols, 4 * rows))
    axes = fig.subplots(rows, cols)
    for ax in np.atleast_1d(axes).ravel():
        ax.axis("off")
    for ax, (v, lesion) in zip(np.atleast_1d(axes).ravel(), panels):
        z = lesion.key_z
        hu = read_png_hu(root / "Images_png" / v.folder / f"{v.first_slice + z:03d}.png")
        window = DISPLAY_WINDOWS_HU["lung"] if lesion.kind == "lung" else DISPLAY_WINDOWS_HU["default"]
        ax.imshow(window_image(hu, window), cmap="gray", vmin=0, vmax=1)
        for other in v.lesions:
            if other.key_z != z and not (other.z_range[0] <= z <= other.z_range[1]):
                continue
            x1, y1, x2, y2 = other.box_xyxy_px if other.key_z == z else other.box3d_xyxy_px
            color = "lime" if other.marked else "yellow"
            style = "-" if other.key_z == z else ":"
            ax.add_patch(
                Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color, linewidth=1.2, linestyle=style)
            )
        ax.set_title(f"{v.key} z={z}\n{lesion.kind} {lesion.long_mm:.0f} mm, {v.interval_mm:g} mm slices", fontsize=8)
    fig.suptitle(
        "synthetic CT: green = RECIST-marked, yellow = unmarked (complete ground truth); dotted = lesion "
        "extends onto this slice",
        fontsize=9,
    )
    save_figure(fig, out_png)
