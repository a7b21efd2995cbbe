"""The harvest's deliverables, written atomically into the run folder:

- ``harvested.pkl``: the newly found lesions P_H^+ of all rounds (not proposals that match existing
  marks), as tracklets whose scores are the lesion score s = s_g * s_c^w the round ranked by (each
  2D score times s_c^w), keyed by sub-volume, like the authors' MinedLesions release; a lesion
  found in several rounds is kept once (the latest round's);
- ``hard_negatives.pkl``: P_H^- and the hard part of P_M^- of all rounds, deduplicated: what the
  next round's HNSL would use (:func:`lesion_harvester.harvest.steps.pool_examples`);
- ``completed_annotations.pkl``: 3D boxes of the original marks (from the proposal that covers
  each mark, else the mark's own slice), the complete labels of V_M (likewise), and the harvested lesions;
- ``harvested.csv``: one row per harvested lesion.

Each round also leaves its own ``round_N/harvested.pkl`` and ``round_N/hard_negatives.pkl``.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from lesion_harvester.harvest.ledger import ProposalRow
from lesion_harvester.harvest.verify import best_match, dedupe
from lesion_harvester.io.annotations import write_boxes_3d, write_tracklets
from lesion_harvester.paths import RunLayout
from lesion_harvester.storage.atomic import atomic_write
from lesion_harvester.structures import Box3D, RecistMark, SliceBox, Tracklet, group_by_volume


@dataclass(frozen=True)
class HarvestedLesion:
    """One harvested lesion: its tracklet with fused scores (2D scores times s_c^w), the round that found
    it, and its scores: s_g, s_c and the lesion score s = s_g * s_c^w the round ranked by."""

    volume: str
    tracklet: Tracklet
    round: int
    s_g: float
    s_c: float
    s: float


def fused_tracklet(row: ProposalRow) -> Tracklet:
    """A proposal's tracklet with each 2D score times s_c^w, so that its highest is the lesion score s."""
    return row.tracklet.scaled((row.score or 0.0) / row.objectness if row.objectness > 0 else 0.0)


def harvested_lesions(harvested_by_round: dict[int, list[ProposalRow]]) -> list[HarvestedLesion]:
    """Every round's P_H^+, deduplicated: where rounds found one lesion, the latest round's is kept."""
    found, info = [], {}
    for r in sorted(harvested_by_round, reverse=True):
        for row in harvested_by_round[r]:
            t = fused_tracklet(row)
            found.append((row.volume, t))
            info[id(t)] = (r, row.objectness, row.lpc or 0.0, row.score or 0.0)
    return [HarvestedLesion(key, t, *info[id(t)]) for key, t in dedupe(found)]


def write_round_outputs(layout: RunLayout, round_: int, harvested: list[ProposalRow],
                        hard_negatives: list[tuple[str, Tracklet]]) -> None:
    """``round_N/harvested.pkl`` (this round's P_H^+, fused scores s) and ``round_N/hard_negatives.pkl``."""
    write_tracklets(layout.round_harvested(round_),
                    group_by_volume((row.volume, fused_tracklet(row)) for row in harvested))
    write_tracklets(layout.round_hard_negatives(round_), group_by_volume(hard_negatives))


def _box3d_for(box: SliceBox, proposals: list[Tracklet]) -> Box3D:
    i, iou = best_match(proposals, box)
    if i >= 0 and iou >= 0.5:
        b = proposals[i].box_3d()
        return Box3D(b.box_xyxy_px, b.z_range)
    return Box3D(box.box_xyxy_px, (float(box.z_index), float(box.z_index)))


def completed_annotations(fully_annotated: dict[str, list[SliceBox]], harvest_keys: list[str],
                          marks: dict[str, list[RecistMark]], known_proposals: dict[str, list[Tracklet]],
                          lesions: list[HarvestedLesion]) -> dict[str, list[Box3D]]:
    """3D boxes of every known and harvested lesion: V_M's complete labels and V_H's marks (each the
    3D box of the last round's proposal that covers it, if any, else its own slice), then the
    harvested lesions."""
    completed: dict[str, list[Box3D]] = {}
    for key, boxes in fully_annotated.items():
        completed[key] = [_box3d_for(b, known_proposals.get(key, [])) for b in boxes]
    for key in harvest_keys:
        proposals = known_proposals.get(key, [])
        completed[key] = [_box3d_for(m.slice_box(), proposals) for m in marks.get(key, [])]
    for lesion in lesions:
        b = lesion.tracklet.box_3d()
        completed.setdefault(lesion.volume, []).append(Box3D(b.box_xyxy_px, b.z_range))
    return completed


def write_harvest_outputs(layout: RunLayout, lesions: list[HarvestedLesion], hard_negatives: list[tuple[str, Tracklet]],
                          completed: dict[str, list[Box3D]]) -> None:
    """Write the run's deliverables (see the module docstring)."""
    write_tracklets(layout.harvested, group_by_volume((lesion.volume, lesion.tracklet) for lesion in lesions))
    write_tracklets(layout.hard_negatives, group_by_volume(hard_negatives))
    write_boxes_3d(layout.completed_annotations, completed)
    write_harvested_csv(layout.harvested_csv, lesions)


def write_harvested_csv(path: Path, lesions: list[HarvestedLesion]) -> None:
    """One row per harvested lesion: its 3D box, key slice, round and scores."""
    with atomic_write(path, "w") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["volume_key", "round", "x1", "y1", "x2", "y2", "z0", "z1", "key_z",
                         "s_g", "s_c", "s", "n_slices"])
        for lesion in lesions:
            t = lesion.tracklet
            b = t.box_3d()
            writer.writerow([lesion.volume, lesion.round, *(round(v, 2) for v in b.box_xyxy_px), int(b.z_range[0]),
                             int(b.z_range[1]), t.key_z, round(lesion.s_g, 4), round(lesion.s_c, 4),
                             round(lesion.s, 4), len(t.z_indices)])
