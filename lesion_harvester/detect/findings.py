"""Findings in the frames users' tools read: records for JSON/CSV, and a label map on the input grid.

Every box leaves in three frames, each named: the volume's array (``box_xyxy_px`` and ``z_index``,
the frame of ``propose``), the input file's voxels (NIfTI array axes; for DICOM column, row, slice
ordered along the slice normal) and world millimetres (RAS or LPS). Boxes are inclusive voxel
ranges; in the world they span the centres of their corner voxels. Sizes count whole voxels
(``x2 - x1 + 1``), the package's box convention.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from lesion_harvester.geometry.frames import WorldFrame, to_input_grid, world_matrix
from lesion_harvester.structures import ROW_COLUMNS, Findings, Tracklet

FRAMES_NOTE = {
    "array": "voxel indices (x, y, z) of the volume as the detector read it: axial slices, x toward the "
             "patient's left, y posterior, z inferior (the frame of `propose` and `box_xyxy_px`)",
    "input_voxels": "voxel indices (i, j, k) of the input file: NIfTI array axes; DICOM column, row, and "
                    "slice ordered by position along the slice normal",
    "world_mm": "patient coordinates in mm, frame RAS (+x right, +y anterior, +z superior) or LPS "
                "(+x left, +y posterior, +z superior), as named by world_frame",
}


LABEL_MAP_NOTE = {
    "labels": "finding n is label n on the input's own grid (0: no finding); its per-slice boxes, filled",
    "overlap": "a voxel holds one label: where findings overlap, the higher score (the lower id) owns the shared "
               "voxels; each finding's label_voxels, box_voxels and shares_voxels_with say what it lost to whom. "
               "Its box and centre in this record are its own, whole",
}


def _r(values, digits: int = 3) -> list[float]:
    return [None if not math.isfinite(v) else round(float(v), digits) for v in np.ravel(values)]


def slice_boxes_px(t: Tracklet, height: int, width: int) -> list[tuple[int, int, int, int, int]]:
    """A finding's per-slice boxes as the voxels a label map fills: ``(z, x1, y1, x2, y2)``, whole
    pixels (rounded), inclusive, clipped to a ``height`` x ``width`` slice."""
    out = []
    for z, b in zip(t.z_indices, t.boxes_xyxy_px):
        x1, x2 = max(0, int(round(b[0]))), min(width - 1, int(round(b[2])))
        y1, y2 = max(0, int(round(b[1]))), min(height - 1, int(round(b[3])))
        if x2 >= x1 and y2 >= y1:
            out.append((int(z), x1, y1, x2, y2))
    return out


def label_ownership(findings: Findings) -> list[dict]:
    """Per finding (by id): ``box_voxels`` (its per-slice boxes), ``label_voxels`` (those the label map
    gives it: a voxel of several findings goes to the lowest id) and ``shares_voxels_with`` (each other
    finding whose boxes share voxels with it: its id, the count, and the id that owns them). Works on
    the boxes alone, without building the label map."""
    _, height, width = findings.volume.shape
    boxes = [slice_boxes_px(t, height, width) for t in findings.tracklets]
    on_slice: dict[int, list[tuple[int, int, int, int, int]]] = {}  # z -> (finding index, box) on it
    for j, own in enumerate(boxes):
        for z, x1, y1, x2, y2 in own:
            on_slice.setdefault(z, []).append((j, x1, y1, x2, y2))
    out = []
    for i, own in enumerate(boxes):
        box_voxels = label_voxels = 0
        shared: dict[int, int] = {}
        for z, x1, y1, x2, y2 in own:
            free = np.ones((y2 - y1 + 1, x2 - x1 + 1), dtype=bool)
            box_voxels += free.size
            for j, ox1, oy1, ox2, oy2 in on_slice[z]:
                if j == i:
                    continue
                ix1, iy1, ix2, iy2 = max(x1, ox1), max(y1, oy1), min(x2, ox2), min(y2, oy2)
                if ix2 < ix1 or iy2 < iy1:
                    continue
                shared[j + 1] = shared.get(j + 1, 0) + (ix2 - ix1 + 1) * (iy2 - iy1 + 1)
                if j < i:  # a higher score takes these voxels in the label map
                    free[iy1 - y1:iy2 - y1 + 1, ix1 - x1:ix2 - x1 + 1] = False
            label_voxels += int(free.sum())
        out.append({"box_voxels": box_voxels, "label_voxels": label_voxels,
                    "shares_voxels_with": [{"id": j, "voxels": n, "owner": min(i + 1, j)}
                                           for j, n in sorted(shared.items())]})
    return out


def finding_record(findings: Findings, index: int, frame: WorldFrame, ownership: dict | None = None) -> dict:
    """Finding ``index`` (0-based; id ``index + 1``) as a JSON-ready dict (see the module's frames),
    with the input it belongs to and, if given, its :func:`label_ownership` entry."""
    t, geometry = findings.tracklets[index], findings.volume.geometry
    p = findings.place(index, frame)
    slices = []
    for z, b, s in zip(t.z_indices, t.boxes_xyxy_px, t.scores):
        s_lo, s_hi = geometry.box_array_to_input(np.array([b[0], b[1], z]), np.array([b[2], b[3], z]))
        slices.append({"z_index": int(z), "box_xyxy_px": _r(b, 2), "score": round(float(s), 4),
                       "box_input_voxels": _r(np.concatenate([s_lo, s_hi]), 2)})
    return {
        "id": index + 1,
        "score": round(t.score, 4),
        "box_array": {"xyz_min": _r(p.box_array_min_xyz, 2), "xyz_max": _r(p.box_array_max_xyz, 2)},
        "box_input_voxels": {"ijk_min": _r(p.box_input_min_ijk, 2), "ijk_max": _r(p.box_input_max_ijk, 2)},
        "box_world_mm": {"min": _r(p.box_world_min_mm), "max": _r(p.box_world_max_mm)},
        "centre_input_voxels": _r(p.centre_input_ijk, 2),
        "centre_world_mm": _r(p.centre_world_mm),
        "long_axis_mm": round(p.long_axis_mm, 2),
        "short_axis_mm": round(p.short_axis_mm, 2),
        "largest_slice_z_index": p.largest_slice,
        "z_range": [int(t.z_indices.min()), int(t.z_indices.max())],
        **(ownership or {}),
        **findings.input_ids,
        "slices": slices,
    }


def input_record(findings: Findings) -> dict:
    """The input the findings belong to: :attr:`Findings.input_ids`, and a DICOM series' description
    and number."""
    dicom = findings.volume.extra.get("dicom") or {}
    series = {"series_description": dicom.get("series_description", ""),
              "series_number": dicom.get("series_number")} if dicom else {}
    return {**findings.input_ids, **series}


def findings_document(findings: Findings, frame: WorldFrame | None = None) -> dict:
    """The whole ``findings.json``: the input (path, DICOM patient, study and series, or file name),
    how the findings were found, the volume and its frames, the label map's overlap rule, and every
    finding by descending score (each naming its input too)."""
    volume = findings.volume
    geometry = volume.geometry
    frame = frame or geometry.native_frame
    ownership = label_ownership(findings)
    return {
        "volume_id": volume.volume_id,
        "source": volume.source,
        "input": input_record(findings),
        "detection": findings.found_with,
        "array_shape_zyx": list(volume.shape),
        "input_shape_ijk": list(geometry.input_shape_ijk),
        "spacing_zyx_mm": _r(volume.spacing_zyx_mm, 6),
        "world_frame": frame,
        "world_origin_known": geometry.origin_known,
        "input_to_world_affine": [_r(row, 6) for row in world_matrix(frame) @ geometry.input_to_ras],
        "frames": FRAMES_NOTE,
        "label_map": {**LABEL_MAP_NOTE,
                      "findings_sharing_voxels": sum(1 for o in ownership if o["shares_voxels_with"])},
        "runtime_s": round(findings.runtime_s, 2),
        "findings": [finding_record(findings, i, frame, ownership[i]) for i in range(len(findings))],
    }


CSV_COLUMNS = list(ROW_COLUMNS)


def label_map_ijk(findings: Findings) -> np.ndarray:
    """(I, J, K) uint16 label map on the input grid: each finding's per-slice boxes filled with its id;
    where findings overlap, the higher score (lower id) wins (:data:`LABEL_MAP_NOTE`, :func:`label_ownership`)."""
    volume = findings.volume
    labels = np.zeros(volume.shape, dtype=np.uint16)
    _, height, width = volume.shape
    for finding_id, t in reversed(list(enumerate(findings.tracklets, start=1))):
        for z, x1, y1, x2, y2 in slice_boxes_px(t, height, width):
            labels[z, y1:y2 + 1, x1:x2 + 1] = finding_id
    return to_input_grid(labels, volume.geometry.array_to_input)


def detection_request(checkpoint: str | Path, min_score: float | None = None,
                      fp_per_volume: float | None = None) -> dict:
    """What a detection was asked for (the checkpoint and a score or an operating point; both None: the
    default), as ``findings.json`` records it: a rerun asking for something else is told so."""
    return {"checkpoint": str(Path(checkpoint).resolve()), "score_threshold": min_score, "fp_per_volume": fp_per_volume}
