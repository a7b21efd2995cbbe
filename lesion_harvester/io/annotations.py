"""The authors' annotation pickle formats, read and written exactly (and CSV copies for people).

The types (:class:`SliceBox`, :class:`Box3D`, :class:`Tracklet`) and the box convention live in
:mod:`lesion_harvester.structures`: ``box_xyxy_px = (x1, y1, x2, y2)`` in pixels of the original
axial slice, inclusive corners; a slice is addressed by its 0-based ``z_index``.

Formats (``key`` = sub-volume ``PPPPPP_SS_RR_AAA-BBB``, optionally with an ``.annot`` suffix):

- 2D boxes (complete annotations, RECIST boxes): ``{key: {z: [[x1, y1, x2, y2, z, z], ...]}}``
- 3D boxes: ``{key: [[x1, y1, x2, y2, z0, z1], ...]}`` (slice z is inside when ``z0 <= z <= z1``)
- detections as tracklets: ``{key: [[(z, [x1, y1, x2, y2, score]), ...], ...]}``

We write plain Python ints, floats, lists and tuples (no numpy objects), which the authors'
``evaluation.py`` reads unchanged.
"""

from __future__ import annotations

import csv
import math
import pickle
from pathlib import Path

from lesion_harvester.errors import DataError
from lesion_harvester.io.atomic import atomic_write
from lesion_harvester.io.safe_pickle import safe_load_pickle
from lesion_harvester.structures import Box3D, Boxes3D, SliceBox, SliceBoxes, Tracklet, Tracklets

PICKLE_PROTOCOL = 2  # the protocol of the released files


def strip_key(key) -> str:
    if not isinstance(key, str):
        raise ValueError(f"volume key must be a string, got {type(key).__name__}")
    return key.removesuffix(".annot")


def _box4(values, where: Path, what: str) -> tuple[float, float, float, float]:
    try:
        box = tuple(float(v) for v in list(values)[:4])
    except (TypeError, ValueError):
        raise DataError(where, f"{what}: expected numbers, got {values!r}") from None
    if len(box) != 4 or not all(math.isfinite(v) for v in box):
        raise DataError(where, f"{what}: expected 4 finite box coordinates, got {values!r}")
    if box[2] < box[0] or box[3] < box[1]:
        raise DataError(where, f"{what}: box {box} has x2 < x1 or y2 < y1")
    return box  # type: ignore[return-value]


def _expect_dict(data, path: Path, what: str) -> dict:
    if not isinstance(data, dict):
        raise DataError(path, f"expected a dict keyed by sub-volume ({what}), got {type(data).__name__}")
    return data


def read_slice_boxes(path: str | Path) -> SliceBoxes:
    """Read ``{key: {z: [[x1, y1, x2, y2, z, z], ...]}}`` (keys with or without ``.annot``)."""
    path = Path(path)
    data = _expect_dict(safe_load_pickle(path), path, "2D boxes")
    result: SliceBoxes = {}
    for raw_key, per_slice in data.items():
        key = _key(raw_key, path)
        if not isinstance(per_slice, dict):
            raise DataError(path, f"{key}: expected {{z: [boxes]}}, got {type(per_slice).__name__}")
        boxes = []
        for z, rows in sorted(per_slice.items(), key=lambda item: float(item[0])):
            for row in rows:
                boxes.append(SliceBox(_z_index(z, path, key), _box4(row, path, f"{key} slice {z}")))
        result[key] = boxes
    return result


def write_slice_boxes(path: str | Path, data: SliceBoxes, annot_suffix: bool = False) -> None:
    """Write 2D boxes in the complete-annotation format, atomically."""
    out: dict = {}
    for key, boxes in data.items():
        per_slice: dict[int, list] = {}
        for b in sorted(boxes, key=lambda sb: sb.z_index):
            z = int(b.z_index)
            per_slice.setdefault(z, []).append([float(v) for v in b.box_xyxy_px] + [float(z), float(z)])
        out[key + (".annot" if annot_suffix else "")] = per_slice
    _dump(path, out)


def read_boxes_3d(path: str | Path) -> Boxes3D:
    """Read ``{key: [[x1, y1, x2, y2, z0, z1], ...]}``; z noise such as 0.9999999999999991 is rounded."""
    path = Path(path)
    data = _expect_dict(safe_load_pickle(path), path, "3D boxes")
    result: Boxes3D = {}
    for raw_key, rows in data.items():
        key = _key(raw_key, path)
        if not isinstance(rows, (list, tuple)):
            raise DataError(path, f"{key}: expected a list of [x1, y1, x2, y2, z0, z1]")
        boxes = []
        for row in rows:
            row = list(row)
            if len(row) != 6:
                raise DataError(path, f"{key}: expected 6 numbers per 3D box, got {row!r}")
            z0, z1 = (round(float(v) * 2) / 2 for v in row[4:6])
            if z1 < z0:
                raise DataError(path, f"{key}: 3D box with z1 < z0 ({row!r})")
            boxes.append(Box3D(_box4(row, path, key), (z0, z1)))
        result[key] = boxes
    return result


def write_boxes_3d(path: str | Path, data: Boxes3D) -> None:
    _dump(
        path,
        {
            key: [[float(v) for v in b.box_xyxy_px] + [float(b.z_range[0]), float(b.z_range[1])] for b in boxes]
            for key, boxes in data.items()
        },
    )


def read_tracklets(path: str | Path) -> Tracklets:
    """Read detections ``{key: [[(z, [x1, y1, x2, y2, score]), ...], ...]}``."""
    path = Path(path)
    data = _expect_dict(safe_load_pickle(path), path, "tracklets")
    result: Tracklets = {}
    for raw_key, tracklets in data.items():
        key = _key(raw_key, path)
        if not isinstance(tracklets, (list, tuple)):
            raise DataError(path, f"{key}: expected a list of tracklets")
        parsed = []
        for i, pairs in enumerate(tracklets):
            try:
                for z, row in pairs:
                    _box4(row, path, f"{key} tracklet {i}")
                    if len(row) < 5 or not math.isfinite(float(row[4])):
                        raise DataError(path, f"{key} tracklet {i}: expected [x1, y1, x2, y2, score]")
                    _z_index(z, path, key)
                parsed.append(Tracklet.from_pairs(pairs))
            except DataError:
                raise
            except (TypeError, ValueError):
                raise DataError(path, f"{key} tracklet {i}: expected [(z, [x1, y1, x2, y2, score]), ...]") from None
        result[key] = parsed
    return result


def write_tracklets(path: str | Path, data: Tracklets) -> None:
    _dump(path, {key: [t.to_pairs() for t in tracklets] for key, tracklets in data.items()})


def read_any_boxes(path: str | Path) -> Tracklets:
    """Read tracklets, 3D boxes or 2D boxes, all returned as tracklets (score 1 where none).

    A 3D box becomes a tracklet with its box on every slice of its (rounded) range.
    """
    path = Path(path)
    data = _expect_dict(safe_load_pickle(path), path, "annotations")
    first = next((v for v in data.values() if len(v) > 0), None)
    if first is None:
        return {_key(k, path): [] for k in data}
    if isinstance(first, dict):
        return {
            key: [Tracklet.single_slice(b.z_index, b.box_xyxy_px, 1.0) for b in boxes]
            for key, boxes in read_slice_boxes(path).items()
        }
    # a tracklet is a list of (z, row) pairs; a 3D box is a flat list of 6 numbers
    if isinstance(list(first)[0][0], (list, tuple)):
        return read_tracklets(path)
    result: Tracklets = {}
    for key, boxes in read_boxes_3d(path).items():
        result[key] = [t for t in map(Tracklet.from_box_3d, boxes) if t is not None]
    return result


def write_slice_boxes_csv(path: str | Path, data: SliceBoxes) -> None:
    _write_csv(
        path,
        ["volume_key", "z_index", "x1", "y1", "x2", "y2"],
        ([key, b.z_index, *(_r(v) for v in b.box_xyxy_px)] for key, boxes in data.items() for b in boxes),
    )


def write_boxes_3d_csv(path: str | Path, data: Boxes3D) -> None:
    _write_csv(
        path,
        ["volume_key", "x1", "y1", "x2", "y2", "z0", "z1"],
        (
            [key, *(_r(v) for v in b.box_xyxy_px), b.z_range[0], b.z_range[1]]
            for key, boxes in data.items()
            for b in boxes
        ),
    )


def write_tracklets_csv(path: str | Path, data: Tracklets) -> None:
    """One row per tracklet: its 3D extent, objectness and key slice (highest 2D score)."""
    rows = []
    for key, tracklets in data.items():
        for i, t in enumerate(tracklets):
            b = t.box_3d()
            rows.append(
                [
                    key,
                    i,
                    *(_r(v) for v in b.box_xyxy_px),
                    int(b.z_range[0]),
                    int(b.z_range[1]),
                    t.key_z,
                    round(t.score, 6),
                    len(t.z_indices),
                ]
            )
    _write_csv(path, ["volume_key", "tracklet", "x1", "y1", "x2", "y2", "z0", "z1", "key_z", "score", "n_slices"], rows)


def _r(v: float) -> float:
    return round(float(v), 3)


def _write_csv(path: str | Path, header: list[str], rows) -> None:
    with atomic_write(path, "w") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _dump(path: str | Path, obj) -> None:
    with atomic_write(path, "wb") as handle:
        pickle.dump(obj, handle, protocol=PICKLE_PROTOCOL)


def _key(raw_key, path: Path) -> str:
    try:
        return strip_key(raw_key)
    except ValueError as exc:
        raise DataError(path, str(exc)) from None


def _z_index(z, path: Path, key: str) -> int:
    try:
        value = float(z)
    except (TypeError, ValueError):
        raise DataError(path, f"{key}: slice index {z!r} is not a number") from None
    if not value.is_integer() or value < 0:
        raise DataError(path, f"{key}: slice index {z!r} must be a non-negative integer")
    return int(value)
