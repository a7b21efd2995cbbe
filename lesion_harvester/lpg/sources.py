"""What the LPG trains on, read from a dataset folder and optional annotation files.

- the RECIST marks of the training volumes (DL_info.csv);
- the complete labels of the fully annotated volumes V_M: ``ground_truth/complete.pkl`` restricted
  to ``splits.json``'s ``fully_annotated`` on the synthetic layout, or ``--fully-annotated FILE``
  (e.g. the released Revised-Train744.pkl) on a real DeepLesion folder;
- extra positives and hard negatives (tracklets, 3D boxes or 2D boxes): the slice of highest
  objectness of each (the middle slice of a 3D box). With ``drop_known_positives`` an extra
  positive that is one of the known lesions (it covers a mark or label at P3D IoU >= 0.5, the
  rule of the harvest's verification) is left out, so that no lesion counts twice (a label set
  of Table III, or completed_annotations.pkl, which holds the marks too). The harvest's
  fine-tuning keeps them: it adds the slice of highest objectness of the proposals on known
  lesions on purpose (paper III-E).

Training volumes are V_M and V_H, validation volumes as :mod:`lesion_harvester.dataset.roles`
decides them (the same rule as the harvest's).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lesion_harvester.dataset.roles import resolve_partition
from lesion_harvester.errors import DataError
from lesion_harvester.evaluation.matching import VolumeTruth, overlaps
from lesion_harvester.geometry.boxes import z_reach_slices
from lesion_harvester.io.annotations import outside_volume, read_any_boxes
from lesion_harvester.io.deeplesion import BOX_PADDING_PX, DeepLesionDataset
from lesion_harvester.io.loader import VolumeSource
from lesion_harvester.lpg.data import SliceRecord, TrainingData
from lesion_harvester.structures import SliceBox, Tracklet

log = logging.getLogger(__name__)


@dataclass
class LPGSources:
    source: VolumeSource
    training: TrainingData
    validation: dict[str, list[SliceBox]]  # ground truth of the validation volumes
    fully_annotated_truth: dict[str, list[SliceBox]]  # complete labels of V_M
    validation_source: str = ""  # where the validation volumes come from


DUPLICATE_IOU = 0.5  # an extra positive covering a known box this well is that lesion (as in verification)


def check_inside(path: str | Path, key: str, tracklets: list[Tracklet], dataset: DeepLesionDataset,
                 what: str) -> None:
    """A DataError naming the file, the volume and the box unless every box lies on a slice of its
    volume, inside its image (give or take DeepLesion's 5 px padding). Training cuts crops and builds
    targets around each box: one at 1e6 px once asked for 187 GiB after the first epoch."""
    sv = dataset.sub_volumes[key]
    for i, t in enumerate(tracklets):
        problem = outside_volume(t, sv.num_slices, sv.image_size_px, margin_px=BOX_PADDING_PX)
        if problem is not None:
            raise DataError(path, f"{key}: {what} {i}: {problem}", "boxes are in pixels of the volume's slices, "
                                  "slices 0-based offsets in the sub-volume")


def _reach(dataset: DeepLesionDataset, key: str, z_index: int, box_xyxy_px) -> tuple[int, int]:
    """The slices (first, last) that a lesion boxed on slice ``z_index`` of volume ``key`` may reach:
    half its longer side up and down (:func:`~lesion_harvester.geometry.boxes.z_reach_slices`)."""
    dz, dy, _ = dataset.sub_volumes[key].spacing_zyx_mm
    reach = z_reach_slices(box_xyxy_px, dy, dz)
    return z_index - reach, z_index + reach


def _key_slice_records(path: str | Path, known: set[str], negative: bool,
                       known_boxes: dict[str, list[SliceBox]] | None,
                       dataset: DeepLesionDataset) -> tuple[list[SliceRecord], dict]:
    """The key-slice records of a file of extra boxes, each checked against its volume; with
    ``known_boxes`` a positive that covers one of its volume's known boxes at P3D IoU >= DUPLICATE_IOU
    (the rule by which the harvest's verification finds the proposals on marked lesions) is left out.
    Returns the records and, per volume, where each positive's lesion lies: (first slice, last slice, box)."""
    tracklets = read_any_boxes(path)
    for key, items in tracklets.items():
        if key in known:
            check_inside(path, key, items, dataset, "hard negative" if negative else "positive")
    records, extents = [], {}
    skipped = duplicates = 0
    for key, items in tracklets.items():
        if key not in known:
            skipped += len(items)
            continue
        truth = None if negative or not (known_boxes or {}).get(key) else VolumeTruth.from_slice_boxes(known_boxes[key])
        for t in items:
            if truth is not None and (overlaps(t, truth, "p3d") >= DUPLICATE_IOU).any():
                duplicates += 1
                continue
            i = t.key_index if len(set(t.scores.tolist())) > 1 else len(t.z_indices) // 2
            box = t.boxes_xyxy_px[i][None]
            empty = np.zeros((0, 4))
            z = int(t.z_indices[i])
            records.append(SliceRecord(key, z, empty if negative else box, box if negative else empty))
            if not negative:  # where a positive's lesion lies, kept out of background crops
                # at least as far as a mark of its size reaches: a lesion given on one slice (the complete
                # labels, a 2D box) continues on its neighbours, which must not become background crops
                z_lo, z_hi = _reach(dataset, key, z, box[0])
                extents.setdefault(key, []).append((min(int(t.z_indices.min()), z_lo),
                                                    max(int(t.z_indices.max()), z_hi), t.box_3d().box_xyxy_px))
    if skipped:
        log.warning("%s: %d boxes in volumes outside the training set were ignored", path, skipped)
    if duplicates:
        log.info("%s: %d positives are marked or labelled lesions already and were left out", path, duplicates)
    return records, extents


def build_sources(root: str | Path, fully_annotated: str | Path | None = None,
                  extra_positives: str | Path | None = None, hard_negatives: str | Path | None = None,
                  exclude_volumes: list[str] | None = None, drop_known_positives: bool = False) -> LPGSources:
    """What the LPG trains and validates on; ``exclude_volumes`` are left out of training."""
    part = resolve_partition(root, fully_annotated, need_fully_annotated=False, purpose="training")
    excluded = set(exclude_volumes or [])
    dataset, fa_truth = part.dataset, part.fully_annotated
    train_keys = [k for k in part.training_keys if k not in excluded]
    records: list[SliceRecord] = []
    exclusions: dict[str, list] = {}
    marks = part.marks
    empty = np.zeros((0, 4))
    known_boxes: dict[str, list[SliceBox]] = {}
    labels_file = part.fully_annotated_file or Path(root) / "ground_truth" / "complete.pkl"
    for key in train_keys:
        if key in fa_truth:
            check_inside(labels_file, key, [Tracklet.single_slice(b.z_index, b.box_xyxy_px, 1.0)
                                            for b in fa_truth[key]], dataset, "lesion")
        boxes = fa_truth[key] if key in fa_truth else [m.slice_box() for m in marks.get(key, [])]
        known_boxes[key] = boxes
        for b in boxes:
            records.append(SliceRecord(key, b.z_index, np.array([b.box_xyxy_px]), empty))
            exclusions.setdefault(key, []).append((*_reach(dataset, key, b.z_index, b.box_xyxy_px),
                                                   np.array(b.box_xyxy_px)))
    known = set(train_keys)
    for path, negative in ((extra_positives, False), (hard_negatives, True)):
        if path:
            extra, extents = _key_slice_records(path, known, negative,
                                                known_boxes if drop_known_positives else None, dataset)
            records += extra
            for key, items in extents.items():  # a positive's lesion (hard negatives have none)
                exclusions.setdefault(key, []).extend((lo, hi, np.array(box)) for lo, hi, box in items)
    if not records:
        raise DataError(root, "no training boxes: no RECIST marks or complete labels in the training volumes")
    training = TrainingData(train_keys, records, exclusions, complete_keys=[k for k in train_keys if k in fa_truth])
    return LPGSources(part.source, training, part.validation, fa_truth, part.validation_source)
