"""Findings in the frames users' tools read: records for JSON/CSV, and a label map on the input grid.

Every box leaves in three frames, each named: the volume's array (``box_xyxy_px`` and ``z_index``,
the frame of ``propose``), the input file's voxels (NIfTI array axes; for DICOM column, row, slice
ordered along the slice normal) and world millimetres (RAS or LPS). Boxes are inclusive voxel
ranges; in the world they span the centres of their corner voxels. Sizes count whole voxels
(``x2 - x1 + 1``), the package's box convention.
"""

from __future__ import annotations

import math

import numpy as np

from lesion_harvester.geometry.frames import WorldFrame, to_input_grid, world_matrix
from lesion_harvester.structures import Findings, Tracklet, Volume

FRAMES_NOTE = {
    "array": "voxel indices (x, y, z) of the volume as the detector read it: axial slices, x toward the "
             "patient's left, y posterior, z inferior (the frame of `propose` and `box_xyxy_px`)",
    "input_voxels": "voxel indices (i, j, k) of the input file: NIfTI array axes; DICOM column, row, and "
                    "slice ordered by position along the slice normal",
    "world_mm": "patient coordinates in mm, frame RAS (+x right, +y anterior, +z superior) or LPS "
                "(+x left, +y posterior, +z superior), as named by world_frame",
}


def _r(values, digits: int = 3) -> list[float]:
    return [None if not math.isfinite(v) else round(float(v), digits) for v in np.ravel(values)]


def _largest_slice(t: Tracklet) -> int:
    b = t.boxes_xyxy_px
    return int(np.argmax((b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)))


def finding_record(finding_id: int, t: Tracklet, volume: Volume, frame: WorldFrame) -> dict:
    """One finding as a JSON-ready dict (see the module's frames)."""
    geometry = volume.geometry
    box = t.box_3d()
    x1, y1, x2, y2 = box.box_xyxy_px
    lo, hi = np.array([x1, y1, box.z_range[0]]), np.array([x2, y2, box.z_range[1]])
    centre = (lo + hi) / 2
    in_lo, in_hi = geometry.box_array_to_input(lo, hi)
    w_lo, w_hi = geometry.box_array_to_world(lo, hi, frame)
    _dz, dy, dx = volume.spacing_zyx_mm
    largest = _largest_slice(t)
    bx = t.boxes_xyxy_px[largest]
    sides_mm = sorted([(bx[2] - bx[0] + 1) * dx, (bx[3] - bx[1] + 1) * dy], reverse=True)
    slices = []
    for z, b, s in zip(t.z_indices, t.boxes_xyxy_px, t.scores):
        s_lo, s_hi = geometry.box_array_to_input(np.array([b[0], b[1], z]), np.array([b[2], b[3], z]))
        slices.append({"z_index": int(z), "box_xyxy_px": _r(b, 2), "score": round(float(s), 4),
                       "box_input_voxels": _r(np.concatenate([s_lo, s_hi]), 2)})
    return {
        "id": finding_id,
        "score": round(t.score, 4),
        "box_array": {"xyz_min": _r(lo, 2), "xyz_max": _r(hi, 2)},
        "box_input_voxels": {"ijk_min": _r(in_lo, 2), "ijk_max": _r(in_hi, 2)},
        "box_world_mm": {"min": _r(w_lo), "max": _r(w_hi)},
        "centre_input_voxels": _r(geometry.points_array_to_input(centre), 2),
        "centre_world_mm": _r(geometry.points_array_to_world(centre, frame)),
        "long_axis_mm": round(float(sides_mm[0]), 2),
        "short_axis_mm": round(float(sides_mm[1]), 2),
        "largest_slice_z_index": int(t.z_indices[largest]),
        "z_range": [int(t.z_indices.min()), int(t.z_indices.max())],
        "slices": slices,
    }


def findings_document(findings: Findings, frame: WorldFrame | None = None) -> dict:
    """The whole ``findings.json``: the volume, its frames, and every finding by descending score."""
    volume = findings.volume
    geometry = volume.geometry
    frame = frame or geometry.native_frame
    return {
        "volume_id": volume.volume_id,
        "source": volume.source,
        "array_shape_zyx": list(volume.shape),
        "input_shape_ijk": list(geometry.input_shape_ijk),
        "spacing_zyx_mm": _r(volume.spacing_zyx_mm, 6),
        "world_frame": frame,
        "world_origin_known": geometry.origin_known,
        "input_to_world_affine": [_r(row, 6) for row in world_matrix(frame) @ geometry.input_to_ras],
        "frames": FRAMES_NOTE,
        "runtime_s": round(findings.runtime_s, 2),
        "findings": [finding_record(i + 1, t, volume, frame) for i, t in enumerate(findings.tracklets)],
    }


CSV_COLUMNS = ["id", "score", "centre_world_x_mm", "centre_world_y_mm", "centre_world_z_mm", "world_frame",
               "long_axis_mm", "short_axis_mm", "i_min", "j_min", "k_min", "i_max", "j_max", "k_max",
               "z_first", "z_last"]


def findings_rows(document: dict) -> list[list]:
    """The CSV rows (``CSV_COLUMNS``) of a findings document: one per finding."""
    rows = []
    for f in document["findings"]:
        rows.append([f["id"], f["score"], *f["centre_world_mm"], document["world_frame"], f["long_axis_mm"],
                     f["short_axis_mm"], *f["box_input_voxels"]["ijk_min"], *f["box_input_voxels"]["ijk_max"],
                     *f["z_range"]])
    return rows


def label_map_ijk(findings: Findings) -> np.ndarray:
    """(I, J, K) uint16 label map on the input grid: each finding's per-slice boxes filled with its id;
    where findings overlap, the higher score (lower id) wins."""
    volume = findings.volume
    labels = np.zeros(volume.shape, dtype=np.uint16)
    _, height, width = volume.shape
    for finding_id, t in reversed(list(enumerate(findings.tracklets, start=1))):
        for z, b in zip(t.z_indices, t.boxes_xyxy_px):
            x1, x2 = max(0, int(round(b[0]))), min(width - 1, int(round(b[2])))
            y1, y2 = max(0, int(round(b[1]))), min(height - 1, int(round(b[3])))
            labels[int(z), y1:y2 + 1, x1:x2 + 1] = finding_id
    return to_input_grid(labels, volume.geometry.array_to_input)
