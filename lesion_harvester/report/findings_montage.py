"""A montage of a scan's top findings: each on its largest slice, at the lung, soft-tissue and bone windows."""

from __future__ import annotations

import math

from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from lesion_harvester.geometry.display import DISPLAY_WINDOWS_HU, window_image
from lesion_harvester.structures import Findings

WINDOWS = ("lung", "default", "bone")
WINDOW_NAMES = {"lung": "lung", "default": "soft-tissue", "bone": "bone"}


def _world_position(findings: Findings, index: int) -> str:
    """Finding ``index``'s centre in world mm, its frame named ("LPS (-12.3, 45.6, 101.0) mm"); relative to
    the first voxel where the input gave no origin."""
    place = findings.place(index)
    values = ", ".join("?" if not math.isfinite(v) else f"{v:.1f}" for v in place.centre_world_mm)
    relative = "" if findings.volume.geometry.origin_known else " from the first voxel"
    return f"{place.world_frame} ({values}) mm{relative}"


def findings_montage(findings: Findings, n: int = 6) -> Figure | None:
    """Rows: the ``n`` best findings (id, score, slice, centre in world mm); columns: the three windows.
    None without findings."""
    chosen = list(enumerate(findings.tracklets, start=1))[:n]
    if not chosen:
        return None
    hu = findings.volume.hu_zyx
    fig = Figure(figsize=(7.5, 2.7 * len(chosen)), layout="constrained")
    axes = fig.subplots(len(chosen), len(WINDOWS), squeeze=False)
    for row_axes, (finding_id, t) in zip(axes, chosen):
        b = t.boxes_xyxy_px
        i = int(((b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)).argmax())
        z, (x1, y1, x2, y2) = int(t.z_indices[i]), b[i]
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        half = max(32.0, 1.6 * max(x2 - x1, y2 - y1))
        for ax, window in zip(row_axes, WINDOWS):
            ax.imshow(window_image(hu[z], DISPLAY_WINDOWS_HU[window]), cmap="gray", vmin=0, vmax=1)
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="orange", lw=1.2))
            ax.set_xlim(cx - half, cx + half)
            ax.set_ylim(cy + half, cy - half)
            ax.set_title(f"{WINDOW_NAMES[window]} window", fontsize=7)
            ax.axis("off")
        row_axes[0].set_title(f"#{finding_id} score {t.score:.2f}, slice z={z}\n"
                              f"{_world_position(findings, finding_id - 1)}\nlung window", fontsize=7)
    fig.suptitle(f"{findings.volume.volume_id}: top findings (orange), largest slice of each", fontsize=8)
    return fig
