"""The harvest's deliverables, written atomically into the run folder:

- ``harvested.pkl``: the newly found lesions P_H^+ of all rounds (not proposals that match existing
  marks), as tracklets whose scores are s_g * s_c, keyed by sub-volume, like the authors'
  MinedLesions release; a lesion found in several rounds is kept once (the latest round's);
- ``hard_negatives.pkl``: P_H^- and the hard part of P_M^- of all rounds, deduplicated, none
  overlapping a lesion;
- ``completed_annotations.pkl``: 3D boxes of the original marks (from the proposal that covers
  each mark, else the mark's own slice), the complete labels of V_M (likewise), and the harvested lesions;
- ``harvested.csv``: one row per harvested lesion.
"""

from __future__ import annotations

import csv

from lesion_harvester.harvest.verify import best_match
from lesion_harvester.io.annotations import Box3D, SliceBox, Tracklet, write_boxes_3d, write_tracklets
from lesion_harvester.io.atomic import atomic_write


def final_harvest(harvest) -> list[tuple[str, Tracklet, int, float, float]]:
    """(volume, tracklet with fused scores, round, s_g, s_c) of every harvested lesion, deduplicated."""
    from lesion_harvester.harvest.rounds import dedupe, scaled_tracklet

    rounds = harvest.ledger.finished_rounds("mine")
    found, info = [], {}
    for r in sorted(rounds, reverse=True):
        for row in harvest.ledger.proposals(r, statuses=("harvested",)):
            t = scaled_tracklet(row.tracklet, row.lpc or 0.0)
            found.append((row.volume, t))
            info[id(t)] = (r, row.objectness, row.lpc or 0.0)
    kept = dedupe(found)
    return [(key, t, *info[id(t)]) for key, t in kept]


def _box3d_for(box: SliceBox, proposals: list[Tracklet]) -> Box3D:
    i, iou = best_match(proposals, box)
    if i >= 0 and iou >= 0.5:
        b = proposals[i].box_3d()
        return Box3D(b.box_xyxy_px, b.z_range)
    return Box3D(box.box_xyxy_px, (float(box.z_index), float(box.z_index)))


def write_harvest_outputs(harvest) -> None:
    from lesion_harvester.harvest.rounds import _group

    run, ledger = harvest.run, harvest.ledger
    rounds = ledger.finished_rounds("mine")
    if not rounds:
        return
    harvested = final_harvest(harvest)
    write_tracklets(run / "harvested.pkl", _group([(key, t) for key, t, *_ in harvested]))
    _, negatives = harvest.pooled_examples(max(rounds))  # what the next round's HNSL would use
    write_tracklets(run / "hard_negatives.pkl", _group(negatives))
    last = max(rounds)
    known_proposals: dict[str, list[Tracklet]] = {}
    for row in ledger.proposals(last, statuses=("recist", "fa_lesion")):
        known_proposals.setdefault(row.volume, []).append(row.tracklet)
    completed: dict[str, list[Box3D]] = {}
    for key, boxes in harvest.inputs.fully_annotated.items():
        completed[key] = [_box3d_for(b, known_proposals.get(key, [])) for b in boxes]
    for key in harvest.inputs.harvest:
        proposals = known_proposals.get(key, [])
        completed[key] = [_box3d_for(m.slice_box(), proposals) for m in harvest.inputs.marks.get(key, [])]
    for key, t, *_ in harvested:
        b = t.box_3d()
        completed.setdefault(key, []).append(Box3D(b.box_xyxy_px, b.z_range))
    write_boxes_3d(run / "completed_annotations.pkl", completed)
    with atomic_write(run / "harvested.csv", "w") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["volume_key", "round", "x1", "y1", "x2", "y2", "z0", "z1", "key_z",
                         "s_g", "s_c", "s", "n_slices"])
        for key, t, r, s_g, s_c in harvested:
            b = t.box_3d()
            writer.writerow([key, r, *(round(v, 2) for v in b.box_xyxy_px), int(b.z_range[0]), int(b.z_range[1]),
                             int(t.z_indices[t.key_index]), round(s_g, 4), round(s_c, 4), round(s_g * s_c, 4),
                             len(t.z_indices)])
