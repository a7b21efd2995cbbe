"""Reviewers' verdicts in the harvest: what they mean (harvest/reviews.py), how the next round uses
them, and their export in the authors' format."""

from __future__ import annotations

import shutil

import numpy as np

from lesion_harvester.dataset.roles import resolve_partition
from lesion_harvester.harvest.ledger import Ledger
from lesion_harvester.harvest.reviews import reviewed_labels
from lesion_harvester.harvest.rounds import harvest
from lesion_harvester.harvest.verify import known_extents, touches
from lesion_harvester.io.annotations import read_boxes_3d, read_slice_boxes, read_tracklets
from lesion_harvester.io.deeplesion import DeepLesionDataset
from lesion_harvester.paths import RunLayout
from lesion_harvester.structures import RecistMark, SliceBox, Tracklet
from tests.conftest import tiny_harvest_preset


def _verdict(id_, volume, kind, ref, action, z=None, box=None):
    return {"id": id_, "volume": volume, "kind": kind, "ref": ref, "action": action, "z_index": z,
            "box_xyxy_px": box, "recist": None, "reviewer": "a"}


def test_reviewed_labels_from_verdicts():
    t_mark = Tracklet(np.array([4, 5]), np.array([[10, 10, 20, 20], [11, 11, 19, 19]], float), np.array([0.9, 0.5]))
    t_new = Tracklet(np.array([7]), np.array([[40, 40, 50, 50]], float), np.array([0.8]))
    t_bad = Tracklet(np.array([2]), np.array([[60, 60, 70, 70]], float), np.array([0.7]))
    tracklets = {(1, "A", 0): t_mark, (1, "A", 1): t_new, (1, "A", 2): t_bad, (1, "B", 0): t_new}
    mark = RecistMark("A", 4, (10, 15, 20, 15), (15, 10, 15, 20), (10.0, 10.0, 20.0, 20.0))
    current = {
        ("A", "proposal", "1:0"): _verdict(1, "A", "proposal", "1:0", "accept"),  # the marked lesion
        ("A", "proposal", "1:1"): _verdict(2, "A", "proposal", "1:1", "adjust", 7, [41, 41, 49, 52]),
        ("A", "proposal", "1:2"): _verdict(3, "A", "proposal", "1:2", "reject"),
        ("A", "drawn", "d4"): _verdict(4, "A", "drawn", "d4", "draw", 9, [1, 2, 3, 4]),
        ("A", "drawn", "d5"): _verdict(5, "A", "drawn", "d5", "delete"),
        ("A", "volume", ""): _verdict(6, "A", "volume", "", "fully_annotated"),
        ("B", "proposal", "1:0"): _verdict(7, "B", "proposal", "1:0", "clear"),
        ("B", "volume", ""): _verdict(8, "B", "volume", "", "clear"),
    }
    out = reviewed_labels(current, lambda q, v, i: tracklets.get((q, v, i)), {"A": [mark]})
    # the marked lesion is not counted twice; the adjusted box replaces the proposal's
    assert out.fully_annotated == {"A": [mark.slice_box(), SliceBox(7, (41, 41, 49, 52)), SliceBox(9, (1, 2, 3, 4))]}
    assert out.rejected == {(1, "A", 2)} and out.accepted == {(1, "A", 0), (1, "A", 1)}
    assert [t is t_bad for _, t in out.negatives] == [True]
    assert len(out.positives) == 3 and all(v == "A" for v, _ in out.positives)


def test_next_round_uses_the_verdicts_and_export(tiny_harvest_run, tiny_dataset, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_harvest_run, run)
    ledger = Ledger(RunLayout(run).ledger)
    given = resolve_partition(tiny_dataset)
    holdout = set(ledger.volumes(holdout=True))
    open_keys = [k for k in given.harvest if k not in holdout and ledger.proposals(1, volumes=[k])]
    dataset = DeepLesionDataset(tiny_dataset)
    marks_of = dataset.marks(open_keys)

    def apart(volume):
        """Three new proposals of ``volume``: the first touching neither the others' extents nor a
        harvested lesion nor a mark, so that no rule but the reviewer's verdict keeps it out of the
        fine-tuning negatives (steps.pool_examples)."""
        spacing = {volume: dataset.sub_volumes[volume].spacing_zyx_mm}

        def extents(rows, labels=None):  # where pool_examples puts these (one-slice ones grow in z)
            return known_extents([(volume, r.tracklet) for r in rows], labels, spacing).get(volume, [])

        rows = [r for r in ledger.proposals(1, volumes=[volume]) if r.status not in ("recist", "marked_piece")]
        known = extents([r for r in rows if r.status == "harvested"],
                        {volume: [m.slice_box() for m in marks_of.get(volume, [])]})
        for first in rows:
            rest = [r for r in rows if r is not first and not touches(first.tracklet, extents([r]))]
            if len(rest) >= 2 and not touches(first.tracklet, known):
                return first, rest[0], rest[1]
        return None

    reviewed = open_keys[0]
    other, (rejected, kept, accepted) = next((k, found) for k in open_keys[1:] if (found := apart(k)))
    with ledger.transaction() as db:  # as if round 1 had harvested both
        ledger.set_statuses(db, 1, [(other, rejected.idx, "harvested"), (other, kept.idx, "harvested")])
    ledger.add_verdict(other, "proposal", f"1:{rejected.idx}", "reject", "alice", 0)
    ledger.add_verdict(other, "proposal", f"1:{accepted.idx}", "accept", "alice", 0)
    drawn = ledger.add_verdict(reviewed, "drawn", "", "draw", "alice", 0, z_index=1, box_xyxy_px=[5.0, 6.0, 15.0, 18.0])
    ledger.add_verdict(reviewed, "volume", "", "fully_annotated", "bob", 0)
    last = ledger.last_verdict_id()
    ledger.close()

    harvest(tiny_dataset, run, tiny_harvest_preset(2), device="cpu", progress=False,
            cache_dir=tiny_harvest_run.parent / "cache")

    ledger, layout = Ledger(RunLayout(run).ledger), RunLayout(run)
    info = ledger.step_info(2, "reviews")
    assert info["up_to"] == last and info["joined_v_m"] == [reviewed] and info["negatives"] == 1
    assert ledger.step_info(1, "reviews")["up_to"] == 0  # round 1 ran before any verdict
    assert reviewed in ledger.volumes(role="fully_annotated")  # the volume counts in V_M...
    assert {row.status for row in ledger.proposals(2, volumes=[reviewed])} <= {"fa_lesion", "fa_negative"}
    marks = DeepLesionDataset(tiny_dataset).marks([reviewed])[reviewed]
    labels = read_slice_boxes(layout.round_fully_annotated(2))  # ...and the LPG trains on its labels
    by_slice = sorted(labels[reviewed], key=lambda b: (b.z_index, b.box_xyxy_px))
    assert by_slice == sorted([m.slice_box() for m in marks] + [SliceBox(1, tuple(drawn["box_xyxy_px"]))],
                              key=lambda b: (b.z_index, b.box_xyxy_px))
    negatives = read_tracklets(layout.finetune_negatives(2)).get(other, [])
    assert any(np.array_equal(t.boxes_xyxy_px, rejected.tracklet.boxes_xyxy_px)
               and np.array_equal(t.z_indices, rejected.tracklet.z_indices) for t in negatives)
    positives = read_tracklets(layout.finetune_positives(2)).get(reviewed, [])
    assert any(t.z_indices.tolist() == [1] and t.boxes_xyxy_px[0].tolist() == [5, 6, 15, 18] for t in positives)

    # deliverables: the rejected lesion leaves harvested.pkl, the accepted one joins the completed annotations
    harvested = read_tracklets(layout.harvested).get(other, [])
    assert not any(np.array_equal(t.boxes_xyxy_px, rejected.tracklet.boxes_xyxy_px) for t in harvested)
    assert any(np.array_equal(t.boxes_xyxy_px, kept.tracklet.boxes_xyxy_px) for t in harvested)
    box = accepted.tracklet.box_3d()
    assert any(np.allclose(b.box_xyxy_px, box.box_xyxy_px) and b.z_range == box.z_range
               for b in read_boxes_3d(layout.completed_annotations)[other])

    from lesion_harvester.review.export import export_reviewed

    out = tmp_path / "reviewed.pkl"
    counts = export_reviewed(run, out, tiny_dataset)
    exported = read_slice_boxes(out)
    assert set(exported) == set(given.fully_annotated) | {reviewed} and counts["reviewed"] == 1
    assert (tmp_path / "reviewed.csv").is_file()
    assert reviewed in resolve_partition(tiny_dataset, out).fully_annotated  # usable as --fully-annotated
