"""Verification (paper Sec. III-C): which 3D proposals cover known lesions, by P3D IoU.

In the fully annotated volumes V_M, proposals that overlap a complete label are P_M^R
(``fa_lesion``) and the others P_M^- (``fa_negative``); in the harvest volumes V_H, proposals that
overlap a RECIST mark are P_H^R (``recist``), and the rest stay candidates for the LPC to sort into
harvested lesions and hard negatives.

Also here: when two tracklets are one lesion (:func:`dedupe`, :func:`duplicates_of`), which
proposals cover an original mark or a piece of one (:func:`covers_marks`), and which lie on a known
lesion at all, as a fragment or a neighbouring slice (:func:`touches`): those are never hard negatives.
"""

from __future__ import annotations

import numpy as np

from lesion_harvester.evaluation.matching import VolumeTruth, overlaps
from lesion_harvester.geometry.boxes import iou3d_voc, touches_box, z_reach_slices
from lesion_harvester.structures import Box3D, RecistMark, SliceBox, Tracklet, group_by_volume

FA_LESION, FA_NEGATIVE, RECIST = "fa_lesion", "fa_negative", "recist"


def match_known(tracklets: list[Tracklet], known: list[SliceBox], iou: float = 0.5,
                metric: str = "p3d") -> np.ndarray:
    """(N,) bool: each proposal overlaps at least one known 2D lesion box with IoU >= ``iou``."""
    if not tracklets:
        return np.zeros(0, dtype=bool)
    truth = VolumeTruth.from_slice_boxes(known)
    if len(truth) == 0:
        return np.zeros(len(tracklets), dtype=bool)
    return np.array([bool((overlaps(t, truth, metric) >= iou).any()) for t in tracklets])


def best_match(tracklets: list[Tracklet], box: SliceBox, metric: str = "p3d") -> tuple[int, float]:
    """Index and P3D IoU of the proposal that covers one known box best (-1 if none overlaps)."""
    truth = VolumeTruth.from_slice_boxes([box])
    best, best_iou = -1, 0.0
    for i, t in enumerate(tracklets):
        value = float(overlaps(t, truth, metric)[0])
        if value > best_iou:
            best, best_iou = i, value
    return best, best_iou


def verify_proposals(proposals: dict[str, list[Tracklet]], fully_annotated: dict[str, list[SliceBox]],
                     marks: dict[str, list[RecistMark]], iou: float = 0.5) -> dict[str, list[str | None]]:
    """The verification status of every proposal, per volume and in the order given.

    V_M volumes (keys of ``fully_annotated``): ``fa_lesion`` or ``fa_negative``. Other volumes:
    ``recist`` where the proposal covers one of the volume's ``marks``, else None (a candidate).
    """
    out: dict[str, list[str | None]] = {}
    for key, tracklets in proposals.items():
        if key in fully_annotated:
            hits = match_known(tracklets, fully_annotated[key], iou)
            out[key] = [FA_LESION if hit else FA_NEGATIVE for hit in hits]
        else:
            hits = match_known(tracklets, [m.slice_box() for m in marks.get(key, [])], iou)
            out[key] = [RECIST if hit else None for hit in hits]
    return out


def _extended_box(t: Tracklet) -> np.ndarray:
    """(x1, y1, x2, y2, z1 - 1, z2 + 1): a tracklet's 3D box grown by one slice up and down, so that
    two pieces of one lesion that stop and restart a slice apart overlap (as stacking extends them)."""
    b = t.box_3d()
    return np.array(list(b.box_xyxy_px) + [b.z_range[0] - 1, b.z_range[1] + 1])


def _overlaps_any(box: np.ndarray, others: list[np.ndarray], min_iou: float) -> bool:
    return any(iou3d_voc(box, other) >= min_iou for other in others)


def dedupe(tracklets: list[tuple[str, Tracklet]], min_iou: float = 0.3) -> list[tuple[str, Tracklet]]:
    """Drop tracklets whose one-slice-extended 3D box overlaps an earlier one's of the same volume
    (3D IoU >= min_iou)."""
    kept: dict[str, list[np.ndarray]] = {}
    out = []
    for key, t in tracklets:
        box = _extended_box(t)
        if _overlaps_any(box, kept.get(key, []), min_iou):
            continue
        kept.setdefault(key, []).append(box)
        out.append((key, t))
    return out


def duplicates_of(candidates: list[tuple[str, Tracklet]], known: list[tuple[str, Tracklet]],
                  min_iou: float = 0.3) -> np.ndarray:
    """(N,) bool: the candidate overlaps a known tracklet of its volume as ``dedupe`` defines it."""
    boxes = group_by_volume((key, _extended_box(t)) for key, t in known)
    return np.array([_overlaps_any(_extended_box(t), boxes.get(key, []), min_iou) for key, t in candidates],
                    dtype=bool)


def same_lesion(a: Tracklet, b: Tracklet) -> bool:
    """Whether two lesions of one volume are one: by the harvest's rule for two tracklets
    (:func:`duplicates_of`: one-slice-extended 3D boxes), or, where one lies on a single slice (a
    drawn or adjusted box), by verification's (the other's box on that slice at IoU >= 0.5:
    :func:`match_known`); the 3D rule alone misses a box drawn on one slice of a long lesion."""
    if duplicates_of([("", a)], [("", b)])[0]:
        return True
    return any(len(x.z_indices) == 1 and bool(match_known([y], [SliceBox(x.key_z, tuple(x.boxes_xyxy_px[0]))])[0])
               for x, y in ((a, b), (b, a)))


def covers_marks(proposals: list[tuple[str, Tracklet]], marks: dict[str, list[RecistMark]],
                 iou: float = 0.5) -> np.ndarray:
    """(N,) bool: proposals (volume key, tracklet) that cover one of their volume's RECIST ``marks``,
    or are a piece of one that does.

    Why: on V_M the 95% threshold is measured without these. In V_H they would be P_H^R or marked
    pieces, never harvested; counted, lesions the LPG trained on (every mark) would lift V_M's
    precision above that of the new lesions the threshold is meant to certify.
    """
    out = np.zeros(len(proposals), dtype=bool)
    for key, idx in group_by_volume((key, i) for i, (key, _) in enumerate(proposals)).items():
        tracklets = [proposals[i][1] for i in idx]
        hits = match_known(tracklets, [m.slice_box() for m in marks.get(key, [])], iou)
        marked = [(key, t) for t, hit in zip(tracklets, hits) if hit]
        pieces = duplicates_of([(key, t) for t in tracklets], marked) if marked else np.zeros(len(idx), dtype=bool)
        out[idx] = hits | pieces
    return out


# --- the rule that keeps a lesion out of the hard negatives ---------------------------------------------------
def tracklet_extent(t: Tracklet) -> Box3D:
    """Where a proposal's lesion lies: its 3D box grown by one slice up and down (as stacking extends
    a proposal across a missed slice)."""
    b = t.box_3d()
    return Box3D(b.box_xyxy_px, (b.z_range[0] - 1, b.z_range[1] + 1))


def label_extent(box: SliceBox, pixel_mm: float, slice_mm: float) -> Box3D:
    """Where a lesion labelled on one slice (a RECIST mark, a complete label, a drawn box) may lie: its
    box on the slices within half its longer side (:func:`~lesion_harvester.geometry.boxes.z_reach_slices`)."""
    reach = z_reach_slices(box.box_xyxy_px, pixel_mm, slice_mm)
    return Box3D(tuple(box.box_xyxy_px), (float(box.z_index - reach), float(box.z_index + reach)))


def touches(t: Tracklet, extents: list[Box3D]) -> bool:
    """The hard-negative exclusion rule: whether any slice of ``t`` inside a lesion's slice range
    overlaps that lesion's box by a pixel or more. A fragment of a lesion, a proposal on its next
    slice, or a loose box around it all touch it; Eq. 3's overwrite would train their slice of the
    lesion as a negative at up to 16x the weight of background."""
    return any(touches_box(t.z_indices, t.boxes_xyxy_px, e.box_xyxy_px, *e.z_range) for e in extents)


def on_lesions(items: list[tuple[str, Tracklet]], extents: dict[str, list[Box3D]]) -> np.ndarray:
    """(N,) bool: each (volume, tracklet) touches (:func:`touches`) one of its volume's ``extents``."""
    return np.array([touches(t, extents.get(key, [])) for key, t in items], dtype=bool)


def known_extents(tracklets: list[tuple[str, Tracklet]], labels: dict[str, list[SliceBox]] | None = None,
                  spacing_zyx_mm: dict[str, tuple[float, float, float]] | None = None,
                  known: dict[str, list[Box3D]] | None = None) -> dict[str, list[Box3D]]:
    """Per volume, where its known lesions lie: those of ``known`` (not changed), proposals found on
    lesions (:func:`tracklet_extent`) and one-slice labels (:func:`label_extent`, with the volume's
    in-plane and slice spacing from ``spacing_zyx_mm``)."""
    out: dict[str, list[Box3D]] = {key: list(extents) for key, extents in (known or {}).items()}
    for key, t in tracklets:
        out.setdefault(key, []).append(tracklet_extent(t))
    for key, boxes in (labels or {}).items():
        slice_mm, pixel_mm = spacing_zyx_mm[key][0], spacing_zyx_mm[key][1]
        out.setdefault(key, []).extend(label_extent(b, pixel_mm, slice_mm) for b in boxes)
    return out
