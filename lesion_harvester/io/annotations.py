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
import numbers
import pickle
from pathlib import Path

import numpy as np

from lesion_harvester.errors import DataError
from lesion_harvester.io.safe_pickle import safe_load_pickle
from lesion_harvester.storage.atomic import atomic_write
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
        slices = sorted(((_z_index(z, path, key), rows) for z, rows in per_slice.items()), key=lambda item: item[0])
        for z, rows in slices:
            if not isinstance(rows, (list, tuple, np.ndarray)):
                raise DataError(path, f"{key} slice {z}: expected a list of boxes [[x1, y1, x2, y2, z, z], ...], "
                                      f"got {_preview(rows)}")
            for row in rows:
                boxes.append(SliceBox(z, _box4(row, path, f"{key} slice {z}")))
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
        if not isinstance(rows, (list, tuple, np.ndarray)):
            raise DataError(path, f"{key}: expected a list of [x1, y1, x2, y2, z0, z1], got {_preview(rows)}")
        if len(rows) and all(_is_number(v) for v in rows):
            raise DataError(path, f"{key}: expected a list of 3D boxes [[x1, y1, x2, y2, z0, z1], ...], got a flat "
                                  f"list of {len(rows)} numbers ({_preview(rows)})")
        boxes = []
        for row in rows:
            numbers = _numbers(row, 6, path, f"{key}: 3D box [x1, y1, x2, y2, z0, z1]")
            z0, z1 = (round(v * 2) / 2 for v in numbers[4:6])
            if z1 < z0:  # (a z0 below 0 is allowed: the released 3D-Box.pkl has boxes reaching before slice 0)
                raise DataError(path, f"{key}: 3D box with z1 < z0 ({_preview(row)})")
            boxes.append(Box3D(_box4(numbers, path, key), (z0, z1)))
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
        result[key] = [_tracklet(pairs, path, f"{key} tracklet {i}") for i, pairs in enumerate(tracklets)]
    return result


def _tracklet(pairs, path: Path, where: str) -> Tracklet:
    """One tracklet ``[(z, [x1, y1, x2, y2, score]), ...]`` (at least one pair), checked."""
    expected = "expected a non-empty list of (z, [x1, y1, x2, y2, score]) pairs"
    if not isinstance(pairs, (list, tuple)) or len(pairs) == 0:
        raise DataError(path, f"{where}: {expected}, got {_preview(pairs)}")
    for pair in pairs:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise DataError(path, f"{where}: {expected}, got the item {_preview(pair)}")
        z, row = pair
        _z_index(z, path, where)
        _numbers(row, 5, path, f"{where}: [x1, y1, x2, y2, score]", at_least=True)
        _box4(row, path, where)
    return Tracklet.from_pairs(pairs)


def write_tracklets(path: str | Path, data: Tracklets) -> None:
    _dump(path, {key: [t.to_pairs() for t in tracklets] for key, tracklets in data.items()})


def read_any_boxes(path: str | Path) -> Tracklets:
    """Read tracklets, 3D boxes or 2D boxes, all returned as tracklets (score 1 where none).

    A 3D box becomes a tracklet with its box on every slice of its (rounded) range.
    """
    path = Path(path)
    data = _expect_dict(safe_load_pickle(path), path, "annotations")
    kind = _format_of(data, path)
    if kind == "empty":
        return {_key(k, path): [] for k in data}
    if kind == "2d":
        return {
            key: [Tracklet.single_slice(b.z_index, b.box_xyxy_px, 1.0) for b in boxes]
            for key, boxes in read_slice_boxes(path).items()
        }
    if kind == "tracklets":
        return read_tracklets(path)
    result: Tracklets = {}
    for key, boxes in read_boxes_3d(path).items():
        result[key] = [t for t in map(Tracklet.from_box_3d, boxes) if t is not None]
    return result


def _format_of(data: dict, path: Path) -> str:
    """Which of the three formats ``data`` is in, from its first non-empty volume: "2d", "3d",
    "tracklets", or "empty" (no volume holds anything). Each reader then checks every volume."""
    for raw_key, value in data.items():
        if isinstance(value, dict):
            return "2d"
        if not isinstance(value, (list, tuple, np.ndarray)):
            raise DataError(path, f"{raw_key}: expected {{z: [boxes]}}, a list of 3D boxes or a list of tracklets, "
                                  f"got {_preview(value)}")
        if len(value) == 0:
            continue
        first = value[0]
        if _is_number(first):
            raise DataError(path, f"{raw_key}: expected a list of 3D boxes [[x1, y1, x2, y2, z0, z1], ...] or of "
                                  f"tracklets [[(z, [x1, y1, x2, y2, score]), ...], ...], got a flat list of numbers "
                                  f"({_preview(value)})")
        # a tracklet is a list of (z, row) pairs (an empty one is reported as such); a 3D box is 6 numbers
        if not isinstance(first, (list, tuple, np.ndarray)) or len(first) == 0 or not _is_number(first[0]):
            return "tracklets"
        return "3d"
    return "empty"


def outside_volume(t: Tracklet, num_slices: int, size_px: tuple[int, int], margin_px: float | None) -> str | None:
    """Why tracklet ``t`` does not lie in a volume of ``num_slices`` slices of ``size_px`` = (width, height)
    pixels, or None. ``margin_px``: how far a box may reach beyond its slice (DeepLesion's boxes reach
    5 px, their padding); None: a box needs only to overlap its slice."""
    z = t.z_indices
    bad = (z < 0) | (z >= num_slices)
    if bad.any():
        return f"slice {int(z[bad][0])} is outside the volume's {num_slices} slices (0-{num_slices - 1})"
    width, height = size_px
    x1, y1, x2, y2 = t.boxes_xyxy_px.T
    if margin_px is None:
        bad = (x2 < 0) | (y2 < 0) | (x1 > width - 1) | (y1 > height - 1)
    else:
        bad = (x1 < -margin_px) | (y1 < -margin_px) | (x2 > width - 1 + margin_px) | (y2 > height - 1 + margin_px)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        box = "[" + ", ".join(f"{v:g}" for v in t.boxes_xyxy_px[i]) + "]"
        return f"box {box} on slice {int(z[i])} lies outside the volume's {width} x {height} px slices"
    return None


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


def _is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _preview(value) -> str:
    """A short picture of an unexpected value, for messages."""
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def _numbers(values, count: int, path: Path, what: str, at_least: bool = False) -> list[float]:
    """``values`` as ``count`` (or, with ``at_least``, at least ``count``) finite floats, or a DataError."""
    if not isinstance(values, (list, tuple, np.ndarray)) or not all(_is_number(v) for v in values):
        raise DataError(path, f"{what}: expected {count} numbers, got {_preview(values)}")
    if len(values) < count or (len(values) > count and not at_least):
        raise DataError(path, f"{what}: expected {count} numbers, got {len(values)}: {_preview(values)}")
    floats = [float(v) for v in values]
    if not all(math.isfinite(v) for v in floats):
        raise DataError(path, f"{what}: expected finite numbers, got {_preview(values)}")
    return floats


def _z_index(z, path: Path, key: str) -> int:
    # a slice index is a number: the authors' files use ints; "3" is text, not a slice
    if not _is_number(z):
        raise DataError(path, f"{key}: slice index {z!r} is not a number ({type(z).__name__}); slice indices are "
                              "0-based integers")
    value = float(z)
    if not value.is_integer() or value < 0:
        raise DataError(path, f"{key}: slice index {z!r} must be a non-negative integer")
    return int(value)
