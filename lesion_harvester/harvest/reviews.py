"""What reviewers' verdicts (``lesion-harvester review``, the ledger's ``verdicts``) mean for the harvest.

A round starts by fixing which verdicts it uses (every verdict given so far; the ``reviews`` step
records the last one's id, so a resumed round reads the same ones). From their current states:

- a volume marked ``fully_annotated`` joins V_M, its complete labels being its RECIST marks, the
  proposals accepted in it (their highest-objectness slice, or the reviewer's adjusted box) and the
  lesions drawn in it;
- accepted, adjusted and drawn lesions are verified positives, rejected proposals hard negatives,
  for the LPG's fine-tuning (its HNSL) and the deliverables.

:func:`reviewed_labels` is pure (the verdicts, proposals and marks come from the caller);
:func:`reviews_in_ledger` reads them from a harvest's ledger. :func:`annotate_fully` is a simulated
annotator for studies (``benchmarks/labor_budget.py``): known complete labels given as verdicts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

from lesion_harvester.dataset.roles import Partition
from lesion_harvester.harvest.ledger import Ledger
from lesion_harvester.harvest.verify import match_known
from lesion_harvester.structures import RecistMark, SliceBox, Tracklet

PROPOSAL_ACTIONS = ("accept", "reject", "adjust", "clear")
DRAWN_ACTIONS = ("draw", "delete")
VOLUME_ACTIONS = ("fully_annotated", "clear")
ACTIONS = {"proposal": PROPOSAL_ACTIONS, "drawn": DRAWN_ACTIONS, "volume": VOLUME_ACTIONS}


def parse_proposal_ref(ref: str) -> tuple[int, int]:
    """``"ROUND:INDEX"`` -> (round, index); ValueError if malformed."""
    round_text, _, idx_text = ref.partition(":")
    if not (round_text.isdigit() and idx_text.isdigit()):
        raise ValueError(f"a proposal is named ROUND:INDEX, not {ref!r}")
    return int(round_text), int(idx_text)


@dataclass
class ReviewedLabels:
    """The harvest-relevant content of the verdicts up to one id."""

    fully_annotated: dict[str, list[SliceBox]] = field(default_factory=dict)  # volumes joining V_M
    positives: list[tuple[str, Tracklet]] = field(default_factory=list)  # accepted, adjusted, drawn
    negatives: list[tuple[str, Tracklet]] = field(default_factory=list)  # rejected proposals
    rejected: set[tuple[int, str, int]] = field(default_factory=set)  # (round, volume, index)
    accepted: set[tuple[int, str, int]] = field(default_factory=set)  # accepted or adjusted proposals

    def counts(self) -> dict:
        return {"fully_annotated": sorted(self.fully_annotated), "positives": len(self.positives),
                "negatives": len(self.negatives)}


def reviewed_labels(current: dict[tuple[str, str, str], dict], proposal: Callable[[int, str, int], Tracklet | None],
                    marks: dict[str, list[RecistMark]]) -> ReviewedLabels:
    """Read the current verdicts (:meth:`Ledger.current_verdicts`) into labels.

    Args:
        current: the latest verdict of each target, by (volume, kind, ref).
        proposal: looks up a proposal's tracklet by (round, volume, index); None if unknown.
        marks: the RECIST marks of the volumes (the start of a fully annotated volume's labels).
    """
    out = ReviewedLabels()
    lesion_boxes: dict[str, list[SliceBox]] = {}
    for (volume, kind, ref), v in sorted(current.items(), key=lambda item: item[1]["id"]):
        action = v["action"]
        if kind == "proposal" and action in ("accept", "adjust", "reject"):
            round_, idx = parse_proposal_ref(ref)
            t = proposal(round_, volume, idx)
            if t is None:
                continue
            if action == "reject":
                out.negatives.append((volume, t))
                out.rejected.add((round_, volume, idx))
                continue
            if action == "adjust":
                t = Tracklet.single_slice(v["z_index"], v["box_xyxy_px"], 1.0)
            out.accepted.add((round_, volume, idx))
            out.positives.append((volume, t))
            lesion_boxes.setdefault(volume, []).append(SliceBox(t.key_z, tuple(t.boxes_xyxy_px[t.key_index])))
        elif kind == "drawn" and action == "draw":
            box = SliceBox(int(v["z_index"]), tuple(float(x) for x in v["box_xyxy_px"]))
            out.positives.append((volume, Tracklet.single_slice(box.z_index, box.box_xyxy_px, 1.0)))
            lesion_boxes.setdefault(volume, []).append(box)
    for (volume, kind, _), v in current.items():
        if kind == "volume" and v["action"] == "fully_annotated":
            known = [m.slice_box() for m in marks.get(volume, [])]
            # a reviewed lesion that is one of the marks is not a second lesion
            found = [b for b in lesion_boxes.get(volume, [])
                     if not known or not match_known([Tracklet.single_slice(b.z_index, b.box_xyxy_px, 1.0)], known)[0]]
            out.fully_annotated[volume] = known + found
    return out


def with_reviews(partition: Partition, reviewed: ReviewedLabels) -> Partition:
    """The partition with the reviewed volumes moved from V_H into V_M, with their complete labels."""
    if not reviewed.fully_annotated:
        return partition
    moved = {k: v for k, v in reviewed.fully_annotated.items() if k in set(partition.harvest)}
    return dataclasses.replace(partition, fully_annotated={**partition.fully_annotated, **moved},
                               harvest=[k for k in partition.harvest if k not in moved])


def reviews_in_ledger(ledger: Ledger, marks_of: Callable[[list[str]], dict[str, list[RecistMark]]],
                      up_to: int | None = None) -> ReviewedLabels:
    """The verdicts of ``ledger`` (ids <= ``up_to``; all if None) read into labels; ``marks_of(keys)``
    gives the RECIST marks of volumes (``DeepLesionDataset.marks``)."""
    current = ledger.current_verdicts(up_to=up_to)
    reviewed_proposals = [parse_proposal_ref(ref) + (volume,) for (volume, kind, ref) in current if kind == "proposal"]
    tracklets = {(row.round, row.volume, row.idx): row.tracklet
                 for q in sorted({q for q, _, _ in reviewed_proposals})
                 for row in ledger.proposals(q, volumes=sorted({v for _, _, v in reviewed_proposals}))}
    return reviewed_labels(current, lambda q, v, i: tracklets.get((q, v, i)),
                           marks_of(sorted({v for (v, kind, _) in current if kind == "volume"})))


def annotate_fully(ledger: Ledger, labels: dict[str, list[SliceBox]], reviewer: str = "simulated annotator") -> int:
    """Deliver complete labels through the path a radiologist's verdicts take: in each volume of
    ``labels`` every lesion is drawn (the marks among them are recognised as marks when the next round
    reads the verdicts) and the volume is marked fully annotated, so that it joins V_M at the next
    round. Returns the number of verdicts given."""
    given = 0
    for volume, boxes in labels.items():
        for box in boxes:
            ledger.add_verdict(volume, "drawn", "", "draw", reviewer, 0, z_index=int(box.z_index),
                               box_xyxy_px=[float(v) for v in box.box_xyxy_px])
        current = ledger.current_verdicts(volume).get((volume, "volume", ""))
        ledger.add_verdict(volume, "volume", "", "fully_annotated", reviewer, current["id"] if current else 0)
        given += len(boxes) + 1
    return given
