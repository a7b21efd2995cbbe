"""The nouns of the pipeline: a CT volume, RECIST marks, 2D and 3D boxes, tracklets, a label set.

Every stage (stacking, verification, the LPG and LPC, evaluation, the harvest) works on these
types; ``io/`` reads and writes them, and nothing here opens a file.

Frames and conventions, stated once:

- A volume is indexed ``(z, y, x)``: ``x`` runs from the patient's right to left (radiological
  display, patient right on the image's left), ``y`` from anterior to posterior, ``z`` from
  superior to inferior (the usual order of axial slices).
- ``box_xyxy_px = (x1, y1, x2, y2)`` in pixels of the original axial slice (x = column,
  y = row), inclusive corners; the released evaluation counts a width as ``x2 - x1 + 1``.
- A slice is addressed by ``z_index``, its 0-based offset inside the (sub-)volume.
- Where a volume lies in its input file and in the patient: :class:`SourceGeometry` (the frames
  are defined in :mod:`lesion_harvester.geometry.frames`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import TypeVar

import numpy as np

from lesion_harvester.errors import DataError
from lesion_harvester.geometry.frames import (
    WorldFrame,
    apply_affine,
    default_input_to_ras,
    transform_box,
    world_matrix,
)

T = TypeVar("T")


@dataclass(frozen=True, eq=False)
class SourceGeometry:
    """Where a volume's voxels lie: in the file it was read from, and in the patient.

    Attributes:
        input_shape_ijk: size of the input file's voxel grid (i, j, k).
        array_to_input: (4, 4) array (x, y, z, 1) -> input (i, j, k, 1); a signed permutation with
            offsets (the array is the input grid reoriented, never resampled).
        input_to_ras: (4, 4) input (i, j, k, 1) -> world RAS mm.
        native_frame: the world frame the input's format speaks (NIfTI "RAS", DICOM "LPS").
        origin_known: False where only the voxel size is known (DeepLesion PNG, synthetic data):
            world positions are then relative to the first voxel, and say so.
    """

    input_shape_ijk: tuple[int, int, int]
    array_to_input: np.ndarray
    input_to_ras: np.ndarray
    native_frame: WorldFrame = "RAS"
    origin_known: bool = True

    @classmethod
    def from_spacing(cls, shape_zyx: tuple[int, int, int],
                     spacing_zyx_mm: tuple[float, float, float]) -> SourceGeometry:
        """For data without an affine: input = array, the package's frame, origin unknown, LPS (DICOM's)."""
        return cls((shape_zyx[2], shape_zyx[1], shape_zyx[0]), np.eye(4), default_input_to_ras(spacing_zyx_mm),
                   native_frame="LPS", origin_known=False)

    def array_to_world(self, frame: WorldFrame) -> np.ndarray:
        """(4, 4) array (x, y, z, 1) -> world mm in ``frame``."""
        return world_matrix(frame) @ self.input_to_ras @ self.array_to_input

    def world_to_array(self, frame: WorldFrame) -> np.ndarray:
        """(4, 4) world mm in ``frame`` -> array (x, y, z, 1)."""
        matrix = self.array_to_world(frame)
        if not np.all(np.isfinite(matrix)):
            raise ValueError("the slice interval is unknown: world positions along z cannot be inverted")
        return np.linalg.inv(matrix)

    def points_array_to_world(self, points_xyz: np.ndarray, frame: WorldFrame) -> np.ndarray:
        """(N, 3) array points (x, y, z) -> (N, 3) world mm in ``frame``."""
        return apply_affine(self.array_to_world(frame), points_xyz)

    def points_world_to_array(self, points_mm: np.ndarray, frame: WorldFrame) -> np.ndarray:
        """(N, 3) world mm in ``frame`` -> (N, 3) array points (x, y, z)."""
        return apply_affine(self.world_to_array(frame), points_mm)

    def points_array_to_input(self, points_xyz: np.ndarray) -> np.ndarray:
        """(N, 3) array points (x, y, z) -> (N, 3) input voxel points (i, j, k); exact."""
        return apply_affine(self.array_to_input, points_xyz)

    def points_input_to_array(self, points_ijk: np.ndarray) -> np.ndarray:
        """(N, 3) input voxel points (i, j, k) -> (N, 3) array points (x, y, z); exact."""
        return apply_affine(np.round(np.linalg.inv(self.array_to_input)), points_ijk)

    def box_array_to_input(self, box_xyz_min, box_xyz_max) -> tuple[np.ndarray, np.ndarray]:
        """An inclusive voxel box of the array -> the same voxels' box (min, max corners) in the input grid."""
        return transform_box(self.array_to_input, box_xyz_min, box_xyz_max)

    def box_array_to_world(self, box_xyz_min, box_xyz_max, frame: WorldFrame) -> tuple[np.ndarray, np.ndarray]:
        """An array box -> its world bounds in ``frame`` (the voxel centres at its corners; exact for
        axis-aligned acquisitions, enclosing for oblique ones)."""
        return transform_box(self.array_to_world(frame), box_xyz_min, box_xyz_max)


@dataclass(frozen=True, eq=False)
class Volume:
    """A CT volume in Hounsfield units.

    Attributes:
        volume_id: stable id; for DeepLesion the sub-volume key ``PPPPPP_SS_RR_AAA-BBB``.
        hu_zyx: (Z, Y, X) int16 or float32 array of HU values.
        spacing_zyx_mm: (slice interval, row spacing, column spacing) in mm. The slice interval
            may be NaN when unknown (then the 2.5D context repeats the target slice).
        slice_numbers: DeepLesion PNG slice number of each z (1-based), where known.
        source: the file or folder it was read from, for messages.
        geometry: where the voxels lie in the input file and the patient; volumes read without an
            affine get :meth:`SourceGeometry.from_spacing` (origin unknown).
    """

    volume_id: str
    hu_zyx: np.ndarray
    spacing_zyx_mm: tuple[float, float, float]
    slice_numbers: tuple[int, ...] | None = None
    source: str = ""
    extra: dict = field(default_factory=dict)
    geometry: SourceGeometry | None = None

    def __post_init__(self) -> None:
        where = self.source or self.volume_id
        if self.hu_zyx.ndim != 3:
            raise DataError(where, f"expected a 3D (z, y, x) volume, got shape {self.hu_zyx.shape}")
        if min(self.hu_zyx.shape) == 0:
            raise DataError(where, f"empty volume (shape {self.hu_zyx.shape})")
        if len(self.spacing_zyx_mm) != 3:
            raise DataError(where, f"expected 3 spacings (z, y, x), got {self.spacing_zyx_mm}")
        dz, dy, dx = (float(s) for s in self.spacing_zyx_mm)
        for name, value in (("row", dy), ("column", dx)):
            if not math.isfinite(value) or value <= 0:
                raise DataError(where, f"invalid {name} spacing {value} mm; it must be a positive number")
        if not (math.isnan(dz) or (math.isfinite(dz) and dz > 0)):
            raise DataError(where, f"invalid slice interval {dz} mm; it must be positive (or NaN if unknown)")
        object.__setattr__(self, "spacing_zyx_mm", (dz, dy, dx))
        if self.slice_numbers is not None and len(self.slice_numbers) != self.hu_zyx.shape[0]:
            raise DataError(where, f"{len(self.slice_numbers)} slice numbers for {self.hu_zyx.shape[0]} slices")
        if self.geometry is None:
            object.__setattr__(self, "geometry", SourceGeometry.from_spacing(self.shape, (dz, dy, dx)))
        else:
            size_xyz = np.abs(self.geometry.array_to_input[:3, :3]) @ np.array(self.shape[::-1])
            if tuple(int(s) for s in size_xyz) != tuple(self.geometry.input_shape_ijk):
                raise DataError(where, f"the geometry's input grid {self.geometry.input_shape_ijk} does not hold "
                                       f"the array's {self.shape[::-1]} (x, y, z) voxels")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.hu_zyx.shape)  # type: ignore[return-value]

    @property
    def num_slices(self) -> int:
        return int(self.hu_zyx.shape[0])

    def require_slices(self, min_slices: int, purpose: str) -> None:
        """Raise a DataError naming the source if the volume has fewer than ``min_slices`` slices."""
        if self.num_slices < min_slices:
            raise DataError(
                self.source or self.volume_id,
                f"{'single-slice' if self.num_slices == 1 else f'{self.num_slices}-slice'} volume; {purpose} needs "
                f"at least {min_slices} slices",
            )

    def summary(self) -> dict:
        """JSON-ready summary: id, shape (z, y, x), spacing_mm (z, y, x), HU range, and where the array
        lies: the input grid (i, j, k) and the array -> world affine in the input's own frame."""
        g = self.geometry
        frame = g.native_frame
        return {
            "id": self.volume_id,
            "shape": list(self.shape),
            "spacing_mm": [None if math.isnan(s) else round(s, 6) for s in self.spacing_zyx_mm],
            "hu_min": float(np.nanmin(self.hu_zyx)),  # NaN: slices missing from a DICOM series
            "hu_max": float(np.nanmax(self.hu_zyx)),
            "missing_slices": int(np.isnan(self.hu_zyx).all(axis=(1, 2)).sum()) if self.hu_zyx.dtype.kind == "f" else 0,
            "input_shape_ijk": list(g.input_shape_ijk),
            "world_frame": frame,
            "world_origin_known": g.origin_known,
            "array_xyz_to_world_mm": [[None if not math.isfinite(v) else round(float(v), 6) for v in row]
                                      for row in g.array_to_world(frame)[:3]],
        }


@dataclass(frozen=True)
class SliceBox:
    """A 2D box on one slice of a sub-volume."""

    z_index: int
    box_xyxy_px: tuple[float, float, float, float]


@dataclass(frozen=True)
class RecistMark:
    """A RECIST mark: long and short axis endpoints on one slice, and its padded box."""

    volume_key: str
    z_index: int
    long_axis_px: tuple[float, float, float, float]  # x1, y1, x2, y2
    short_axis_px: tuple[float, float, float, float]
    box_xyxy_px: tuple[float, float, float, float]

    def slice_box(self) -> SliceBox:
        return SliceBox(self.z_index, self.box_xyxy_px)


@dataclass(frozen=True)
class Box3D:
    """A 3D box: in-plane pixel extent and an inclusive slice range (floats: may be half-integers)."""

    box_xyxy_px: tuple[float, float, float, float]
    z_range: tuple[float, float]

    def contains_slice(self, z_index: float) -> bool:
        return self.z_range[0] <= z_index <= self.z_range[1]


@dataclass(frozen=True, eq=False)
class Tracklet:
    """A 3D proposal: one 2D box per slice.

    Attributes:
        z_indices: (n,) int slice offsets, ascending.
        boxes_xyxy_px: (n, 4) float boxes.
        scores: (n,) float 2D scores; the tracklet's objectness is their max.
    """

    z_indices: np.ndarray
    boxes_xyxy_px: np.ndarray
    scores: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.z_indices)
        if self.boxes_xyxy_px.shape != (n, 4) or self.scores.shape != (n,) or n == 0:
            raise ValueError(
                f"tracklet needs n >= 1 slices with (n, 4) boxes and (n,) scores; got "
                f"{self.z_indices.shape}, {self.boxes_xyxy_px.shape}, {self.scores.shape}"
            )

    @classmethod
    def from_pairs(cls, pairs) -> Tracklet:
        """From ``[(z, [x1, y1, x2, y2, score]), ...]``."""
        z = np.array([int(round(float(p[0]))) for p in pairs], dtype=np.int64)
        rows = np.array([np.asarray(p[1], dtype=np.float64)[:5] for p in pairs], dtype=np.float64)
        order = np.argsort(z, kind="stable")
        return cls(z[order], rows[order, :4], rows[order, 4])

    @classmethod
    def single_slice(cls, z_index: int, box_xyxy_px, score: float) -> Tracklet:
        """A one-slice tracklet, e.g. a RECIST mark or a 2D detection."""
        return cls(np.array([int(z_index)]), np.array([list(box_xyxy_px)], dtype=np.float64), np.array([score]))

    @classmethod
    def from_box_3d(cls, box: Box3D) -> Tracklet | None:
        """The 3D box on every whole slice of its range, score 1; None if the range holds no whole slice."""
        zs = np.arange(math.ceil(box.z_range[0]), math.floor(box.z_range[1]) + 1)
        if len(zs) == 0:
            return None
        return cls(zs, np.tile(np.array(box.box_xyxy_px), (len(zs), 1)), np.ones(len(zs)))

    @property
    def score(self) -> float:
        return float(self.scores.max())

    @property
    def key_index(self) -> int:
        """Index of the slice with the highest score (the paper's "highest objectness" slice)."""
        return int(np.argmax(self.scores))

    @property
    def key_z(self) -> int:
        """The slice of the highest score."""
        return int(self.z_indices[self.key_index])

    def box_3d(self) -> Box3D:
        b = self.boxes_xyxy_px
        extent = (float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 2].max()), float(b[:, 3].max()))
        return Box3D(extent, (float(self.z_indices.min()), float(self.z_indices.max())))

    def scaled(self, factor: float) -> Tracklet:
        """The same boxes with every 2D score multiplied by ``factor`` (objectness s_g -> s_g * factor)."""
        return Tracklet(self.z_indices, self.boxes_xyxy_px, self.scores * factor)

    def with_objectness(self, value: float) -> Tracklet:
        """The same boxes with the 2D scores scaled so that the tracklet's objectness is ``value``."""
        return self.scaled(value / max(self.score, 1e-12))

    def to_pairs(self) -> list[tuple[int, list[float]]]:
        return [
            (int(z), [float(v) for v in box] + [float(s)])
            for z, box, s in zip(self.z_indices, self.boxes_xyxy_px, self.scores)
        ]


@dataclass(frozen=True)
class FindingPlace:
    """Where one finding lies, in the three frames of :mod:`lesion_harvester.geometry.frames`.

    Boxes are inclusive voxel ranges, given by their (3,) min and max corners: array ``(x, y, z)``,
    input voxels ``(i, j, k)``, world mm in ``world_frame`` (the voxel centres at the corners).
    ``long_axis_mm`` and ``short_axis_mm`` are the sides of its box on its largest slice (whole
    voxels, ``x2 - x1 + 1``), ``largest_slice`` that slice's ``z_index``.
    """

    world_frame: WorldFrame
    box_array_min_xyz: np.ndarray
    box_array_max_xyz: np.ndarray
    box_input_min_ijk: np.ndarray
    box_input_max_ijk: np.ndarray
    box_world_min_mm: np.ndarray
    box_world_max_mm: np.ndarray
    centre_array_xyz: np.ndarray
    centre_input_ijk: np.ndarray
    centre_world_mm: np.ndarray
    long_axis_mm: float
    short_axis_mm: float
    largest_slice: int


# where an input's identity is not known (a NIfTI file has no series, a DICOM series no file name)
UNKNOWN_ID = ""
ROW_COLUMNS = (
    "id", "score", "centre_world_x_mm", "centre_world_y_mm", "centre_world_z_mm",
    "box_world_min_x_mm", "box_world_min_y_mm", "box_world_min_z_mm",
    "box_world_max_x_mm", "box_world_max_y_mm", "box_world_max_z_mm", "world_frame",
    "long_axis_mm", "short_axis_mm", "i_min", "j_min", "k_min", "i_max", "j_max", "k_max", "z_first", "z_last",
    "input", "volume_id", "file_name", "patient_id", "study_instance_uid", "series_instance_uid",
)


def _rounded(value: float, digits: int) -> float | None:
    return round(float(value), digits) if math.isfinite(value) else None


@dataclass(frozen=True, eq=False)
class Findings:
    """The lesions found in one volume, by descending score: finding ``i`` has id ``i + 1`` (its label
    in a label map). Boxes are in the volume's array frame; ``volume.geometry`` places them in the
    input file and in the world (:meth:`place`, :meth:`rows`; :mod:`lesion_harvester.detect.findings`
    for the whole record). ``found_with`` says how they were found (the detector fills it: checkpoint,
    score threshold and the rule that chose it)."""

    volume: Volume
    tracklets: tuple[Tracklet, ...]
    runtime_s: float = 0.0
    found_with: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        ordered = tuple(sorted(self.tracklets, key=lambda t: -t.score))
        object.__setattr__(self, "tracklets", ordered)

    def __len__(self) -> int:
        return len(self.tracklets)

    def __repr__(self) -> str:
        # the dataclass repr would print the whole volume array
        scores = " ".join(f"{t.score:.2f}" for t in self.tracklets[:5]) + (" ..." if len(self) > 5 else "")
        threshold = self.found_with.get("score_threshold")
        at = f", score >= {threshold:.3g}" if threshold is not None else ""
        return (f"Findings({self.volume.volume_id!r}: {len(self)} finding{'' if len(self) == 1 else 's'}"
                f"{', top scores ' + scores if scores else ''}{at})")

    @property
    def input_ids(self) -> dict[str, str]:
        """Which input the findings belong to: its path and volume id, the file name (NIfTI and other
        files) or the DICOM series' patient ID, study and series instance UIDs (``volume.extra["dicom"]``
        of :mod:`lesion_harvester.io.dicom`); ``""`` where the input does not say."""
        dicom = self.volume.extra.get("dicom") or {}
        source = self.volume.source
        return {"input": source, "volume_id": self.volume.volume_id,
                "file_name": UNKNOWN_ID if dicom or not source else PurePath(source).name,
                "patient_id": str(dicom.get("patient_id", UNKNOWN_ID)),
                "study_instance_uid": str(dicom.get("study_uid", UNKNOWN_ID)),
                "series_instance_uid": str(dicom.get("series_uid", UNKNOWN_ID))}

    def place(self, index: int, frame: WorldFrame | None = None) -> FindingPlace:
        """Where finding ``index`` (0-based, id ``index + 1``) lies; world mm in ``frame`` (default: the
        input's own, RAS for NIfTI, LPS for DICOM)."""
        t, volume = self.tracklets[index], self.volume
        geometry = volume.geometry
        frame = frame or geometry.native_frame
        box = t.box_3d()
        x1, y1, x2, y2 = box.box_xyxy_px
        lo, hi = np.array([x1, y1, box.z_range[0]]), np.array([x2, y2, box.z_range[1]])
        centre = (lo + hi) / 2
        in_lo, in_hi = geometry.box_array_to_input(lo, hi)
        w_lo, w_hi = geometry.box_array_to_world(lo, hi, frame)
        _dz, dy, dx = volume.spacing_zyx_mm
        b = t.boxes_xyxy_px
        largest = int(np.argmax((b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)))
        bx = b[largest]
        long_mm, short_mm = sorted([(bx[2] - bx[0] + 1) * dx, (bx[3] - bx[1] + 1) * dy], reverse=True)
        return FindingPlace(frame, lo, hi, in_lo, in_hi, w_lo, w_hi, centre, geometry.points_array_to_input(centre),
                            geometry.points_array_to_world(centre, frame), float(long_mm), float(short_mm),
                            int(t.z_indices[largest]))

    def rows(self, frame: WorldFrame | None = None) -> list[dict]:
        """One flat dict per finding (the columns of :data:`ROW_COLUMNS`, ``findings.csv``'s), by
        descending score: centre and box corners in world mm (``frame``, default the input's own; None
        where the slice interval is unknown), the box's sides in mm, the box in input voxels, the slice
        range, and the input it belongs to. ``pandas.DataFrame(findings.rows())`` makes a table."""
        ids = self.input_ids
        rows = []
        for index, t in enumerate(self.tracklets):
            p = self.place(index, frame)
            rows.append({
                "id": index + 1, "score": round(t.score, 4),
                **{f"centre_world_{a}_mm": _rounded(v, 3) for a, v in zip("xyz", p.centre_world_mm)},
                **{f"box_world_min_{a}_mm": _rounded(v, 3) for a, v in zip("xyz", p.box_world_min_mm)},
                **{f"box_world_max_{a}_mm": _rounded(v, 3) for a, v in zip("xyz", p.box_world_max_mm)},
                "world_frame": p.world_frame,
                "long_axis_mm": round(p.long_axis_mm, 2), "short_axis_mm": round(p.short_axis_mm, 2),
                **{f"{a}_min": _rounded(v, 2) for a, v in zip("ijk", p.box_input_min_ijk)},
                **{f"{a}_max": _rounded(v, 2) for a, v in zip("ijk", p.box_input_max_ijk)},
                "z_first": int(t.z_indices.min()), "z_last": int(t.z_indices.max()),
                **ids,
            })
        return rows


SliceBoxes = dict[str, list[SliceBox]]
Boxes3D = dict[str, list[Box3D]]
Tracklets = dict[str, list[Tracklet]]


@dataclass(frozen=True)
class LabelSet:
    """What a detector trains on: a dataset's RECIST marks and V_M's complete labels, with optional
    extra lesions and hard negatives (each a tracklet, 3D-box or 2D-box pickle, as given).

    The label sets of the paper's Table III are read from a harvest run folder
    (:func:`lesion_harvester.harvest.label_sets.label_set`); ``train-lpg`` makes one of the files given
    one by one.

    Attributes:
        name: the set's name in Table III (``R``, ``R+P``, ...), "" for files given one by one.
        data: the DeepLesion-layout dataset folder.
        fully_annotated: V_M's complete labels (None: the synthetic layout's own, ``splits.json``).
        extra_positives: more lesions (``harvested.pkl`` for R+P and R+P+N).
        hard_negatives: hard negatives, trained through the HNSL (``hard_negatives.pkl`` for R+N and R+P+N).
    """

    name: str
    data: Path
    fully_annotated: str | None = None
    extra_positives: str | None = None
    hard_negatives: str | None = None


def group_by_volume(items: Iterable[tuple[str, T]]) -> dict[str, list[T]]:
    """``[(volume key, item), ...]`` -> ``{volume key: [items in their order]}``, keys in first-seen order."""
    out: dict[str, list[T]] = {}
    for key, item in items:
        out.setdefault(key, []).append(item)
    return out


def marks_to_tracklets(marks: dict[str, list[RecistMark]], score: float = 1.0) -> Tracklets:
    """RECIST marks as single-slice detections, for evaluating the original marks."""
    return {key: [Tracklet.single_slice(m.z_index, m.box_xyxy_px, score) for m in ms] for key, ms in marks.items()}
