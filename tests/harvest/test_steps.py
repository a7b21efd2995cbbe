"""Each step of a harvest round on its own, on hand-made proposals (no training, no ledger)."""

import numpy as np
import pytest
import torch

from lesion_harvester.config import HarvestConfig, LPCConfig, load_preset
from lesion_harvester.geometry.preprocess import normalize_hu
from lesion_harvester.harvest.ledger import ProposalRow
from lesion_harvester.harvest.mine import hard_negatives_of, mine_round
from lesion_harvester.harvest.outputs import (
    completed_annotations,
    harvested_lesions,
    write_harvested_csv,
    write_round_outputs,
)
from lesion_harvester.harvest.steps import (
    classifiable,
    fuse,
    lpc_examples,
    lpc_folds,
    lpc_probabilities,
    lpc_shortfall,
    lpg_preset,
    pool_examples,
    pretraining_items,
    vh_negative_items,
)
from lesion_harvester.harvest.verify import label_extent, verify_proposals
from lesion_harvester.io.annotations import read_tracklets
from lesion_harvester.paths import RunLayout
from lesion_harvester.preprocessing import PreparedVolume
from lesion_harvester.structures import RecistMark, SliceBox, Tracklet


def _t(x: float, score: float, z: int = 0, size: float = 5.0) -> Tracklet:
    return Tracklet(np.array([z]), np.array([[x, 0.0, x + size, size]]), np.array([score]))


def _row(key: str, idx: int, t: Tracklet, status: str = "candidate", lpc: float | None = None,
         score: float | None = None) -> ProposalRow:
    return ProposalRow(1, key, idx, t, t.score, lpc, score, status)


def _mark(key: str, z: int, box) -> RecistMark:
    return RecistMark(key, z, (box[0], box[1], box[2], box[3]), (box[0], box[3], box[2], box[1]), tuple(box))


def test_verify_labels_v_m_completely_and_v_h_by_its_marks():
    fully_annotated = {"vm": [SliceBox(0, (0.0, 0.0, 5.0, 5.0))]}
    marks = {"vh": [_mark("vh", 0, (100.0, 0.0, 105.0, 5.0))]}
    proposals = {"vm": [_t(0, 0.9), _t(50, 0.8)], "vh": [_t(100, 0.7), _t(0, 0.6)], "other": [_t(0, 0.5)]}
    assert verify_proposals(proposals, fully_annotated, marks) == {
        "vm": ["fa_lesion", "fa_negative"], "vh": ["recist", None], "other": [None]}


def test_lpc_examples_add_the_known_lesions_when_verification_found_too_few():
    fully_annotated = {"vm": [SliceBox(2, (0.0, 0.0, 5.0, 5.0))]}
    marks = {"vh": [_mark("vh", 3, (10.0, 10.0, 20.0, 20.0))]}
    vm_rows = [("vm", _t(0, 0.9), "fa_lesion"), ("vm", _t(50, 0.8), "fa_negative")]
    marked = [("vh", _t(10, 0.7))]
    enough = lpc_examples(vm_rows, marked, fully_annotated, marks, min_positives=2)
    assert enough.vm_labels.tolist() == [1, 0] and len(enough.positives) == 1
    few = lpc_examples(vm_rows, marked, fully_annotated, marks, min_positives=3)
    added = few.positives[1:]  # the complete label of V_M and the mark of V_H, as one-slice proposals
    assert [(k, t.z_indices.tolist(), t.score) for k, t in added] == [("vm", [2], 1.0), ("vh", [3], 1.0)]
    assert few.counts() == {"positives": 4, "negatives": 1}


def test_folds_deal_sorted_v_m_volumes_round_robin():
    assert lpc_folds(["d", "b", "a", "c", "e"], 2) == [["a", "c", "e"], ["b", "d"]]
    assert lpc_folds(["b", "a"], 0) == [["a", "b"]]


def test_classifiable_keeps_the_top_proposals_per_volume():
    cfg = LPCConfig(min_objectness=0.3, max_per_volume=2)
    rows = [_row("a", 0, _t(0, 0.2)), _row("a", 1, _t(10, 0.9)), _row("a", 2, _t(20, 0.5)),
            _row("a", 3, _t(30, 0.7)), _row("b", 0, _t(0, 0.4))]
    assert [(r.volume, r.idx) for r in classifiable(rows, cfg)] == [("a", 1), ("a", 3), ("b", 0)]


def test_pretraining_learns_from_the_top_proposals_of_open_volumes_only():
    proposals = [("vm", _t(0, 0.9)), ("h", _t(0, 0.2)), ("h", _t(10, 0.9)), ("h", _t(20, 0.05)),
                 ("h", _t(30, 0.5)), ("test", _t(0, 0.8)), ("g", _t(0, 0.3))]
    cfg = LPCConfig(min_objectness=0.1, pretrain="lpg_scores", pretrain_per_volume=2)
    kept = pretraining_items(proposals, {"vm", "test"}, cfg)
    assert [(key, t.score) for key, t in kept] == [("h", 0.9), ("h", 0.5), ("g", 0.3)]
    assert pretraining_items(proposals, {"vm", "test"}, LPCConfig()) == []  # off by default


def test_v_h_negatives_are_drawn_below_the_cut_off_known_lesions_and_outside_closed_volumes():
    from lesion_harvester.structures import Box3D

    proposals = [("h", _t(0, 0.05)), ("h", _t(10, 0.2)), ("h", _t(20, 0.3)), ("h", _t(30, 0.45)), ("h", _t(40, 0.6)),
                 ("h", _t(50, 0.25)), ("h", _t(60, 0.5)), ("vm", _t(0, 0.3)), ("g", _t(0, 0.3))]
    known = {"h": [Box3D((52.0, 0.0, 54.0, 3.0), (0, 0))]}  # touches h's proposal at x = 50
    cfg = LPCConfig(min_objectness=0.1, vh_negatives_per_volume=2, vh_negatives_below=0.5)
    picked = vh_negative_items(proposals, {"vm"}, known, cfg, seed=3)
    eligible = {0.2, 0.3, 0.45}  # not under min_objectness, not at or above the cut, not on the known lesion
    assert [key for key, _ in picked] == ["g", "h", "h"]
    h_scores = [t.score for key, t in picked if key == "h"]
    assert set(h_scores) <= eligible and len(set(h_scores)) == 2
    assert h_scores == sorted(h_scores, key=[0.2, 0.3, 0.45].index)  # in the order given
    assert vh_negative_items(proposals, {"vm"}, known, cfg, seed=3) == picked  # the seed decides the draw
    draws = {tuple(t.score for _, t in vh_negative_items(proposals, {"vm"}, known, cfg, seed=s)) for s in range(20)}
    assert len(draws) > 1  # and it is a draw, not the top by s_g
    assert vh_negative_items(proposals, {"vm"}, known, LPCConfig(), seed=3) == []  # off by default


def test_a_fold_without_v_m_negatives_can_train_on_v_h_negatives():
    vm_rows = [("a", _t(0, 0.9), "fa_lesion"), ("b", _t(0, 0.8), "fa_lesion")]
    examples = lpc_examples(vm_rows, [("h", _t(10, 0.7))], {}, {}, min_positives=0)
    assert "0 negative" in lpc_shortfall(examples, [["a"], ["b"]])
    with_vh = lpc_examples(vm_rows, [("h", _t(10, 0.7))], {}, {}, min_positives=0,
                           vh_negatives=[("h", _t(40, 0.3))])
    assert lpc_shortfall(with_vh, [["a"], ["b"]]) is None and with_vh.counts()["negatives"] == 1


def test_fuse_picks_the_exponent_on_v_m_and_scores_unclassified_proposals_zero():
    # on V_M the LPC is wrong (it prefers the false positive): the LPG alone (w = 0) admits more lesions
    vm = [_row("vm", 0, _t(0, 0.9), "fa_lesion"), _row("vm", 1, _t(10, 0.8), "fa_lesion"),
          _row("vm", 2, _t(20, 0.3), "fa_negative")]
    probability = {("vm", 0): 0.2, ("vm", 1): 0.3, ("vm", 2): 0.9, ("vh", 0): 0.5}
    candidates = [_row("vh", 0, _t(0, 0.6)), _row("vh", 1, _t(10, 0.05))]
    updates, exponent, table = fuse(vm, {}, vm + candidates, probability, (1.0, 0.0), 0.95)
    assert exponent == 0.0 and [e["admitted_lesions"] for e in table] == [0, 2]
    assert updates[3] == ("vh", 0, 0.5, pytest.approx(0.6)) and updates[4] == ("vh", 1, 0.0, pytest.approx(0.05))
    updates, exponent, _ = fuse(vm, {}, candidates, probability, (1.0,), 0.95)
    assert exponent == 1.0 and updates == [("vh", 0, 0.5, pytest.approx(0.3)), ("vh", 1, 0.0, 0.0)]


def test_fuse_leaves_the_proposals_on_v_m_marks_out_of_the_choice():
    # the two top V_M lesions carry marks (no V_H proposal like them can be harvested); among the new
    # proposals the LPC ranks the lesion above the false positive and the LPG does not
    vm = [_row("vm", 0, _t(0, 0.9), "fa_lesion"), _row("vm", 1, _t(10, 0.85), "fa_lesion"),
          _row("vm", 2, _t(20, 0.5), "fa_negative"), _row("vm", 3, _t(30, 0.4), "fa_lesion")]
    probability = {("vm", 0): 0.1, ("vm", 1): 0.1, ("vm", 2): 0.5, ("vm", 3): 0.9}
    marks = {"vm": [_mark("vm", 0, (0, 0, 5, 5)), _mark("vm", 0, (10, 0, 15, 5))]}
    _, with_marks, table = fuse(vm, {}, vm, probability, (1.0, 0.0), 0.95, "ap")
    assert with_marks == 0.0  # counted, the marked lesions at the top make the LPG alone look better
    _, exponent, table = fuse(vm, marks, vm, probability, (1.0, 0.0), 0.95, "ap")
    assert exponent == 1.0 and [e["ap"] for e in table] == [pytest.approx(1.0), pytest.approx(0.5)]


def test_later_rounds_fine_tune_the_lpg_briefly():
    preset = load_preset("tiny")
    assert lpg_preset(preset, 1) is preset
    t, h = preset.lpg_train, preset.harvest
    second = lpg_preset(preset, 2).lpg_train
    assert (second.epochs, second.iters_per_epoch, second.seed) == (h.finetune_epochs, h.finetune_iters_per_epoch,
                                                                     t.seed + 2)
    assert second.lr == pytest.approx(t.lr * h.finetune_lr_factor) and second.warmup_iters == min(t.warmup_iters, 50)


def test_finetuning_uses_only_the_hard_v_m_negatives():
    cfg = HarvestConfig(hard_min_objectness=0.5, hard_top_per_volume=2)
    scores = [0.9, 0.7, 0.6, 0.3, 0.2, 0.1]  # far-apart single-slice boxes, so none is a duplicate of another
    fa_negative = [_row("vm", i, _t(10.0 * i, s), "fa_negative") for i, s in enumerate(scores)]
    negatives = hard_negatives_of([], fa_negative, cfg, {})
    # objectness >= 0.5 (0.9, 0.7, 0.6), at most the top two per volume: not the rest
    assert sorted(t.score for _, t in negatives) == [0.7, 0.9]
    _, pooled = pool_examples([([], negatives)], set())
    assert sorted(t.score for _, t in pooled) == [0.7, 0.9]
    # a fragment of a labelled V_M lesion (verification left it in P_M^-) is none; the 0.6 takes its place
    lesion = {"vm": [label_extent(SliceBox(0, (0.0, 0.0, 5.0, 5.0)), 1.0, 5.0)]}
    negatives = hard_negatives_of([], fa_negative, cfg, lesion)
    assert sorted(t.score for _, t in negatives) == [0.6, 0.7]


def test_a_negative_on_a_positive_never_reaches_the_hnsl_targets(tmp_path):
    """The pooled N (fine-tuning negatives and Table III's N) holds no negative on a positive of any
    round, nor on a known lesion; the LPG's training records then carry no hard negative there."""
    lesion = Tracklet(np.array([3, 4, 5]), np.array([[20.0, 20, 40, 40]] * 3), np.full(3, 0.9))
    fragment = Tracklet(np.array([5, 6]), np.array([[25.0, 25, 32, 32]] * 2), np.full(2, 0.6))  # round 1's negative
    elsewhere = Tracklet(np.array([4]), np.array([[80.0, 80, 90, 90]]), np.array([0.7]))
    on_mark = Tracklet(np.array([9]), np.array([[60.0, 20, 70, 30]]), np.array([0.7]))
    marks = {"v": [label_extent(SliceBox(10, (60.0, 20.0, 70.0, 30.0)), 1.0, 2.5)]}  # reaches slices 8-12
    # round 2 harvested the lesion (later rounds first); round 1 had a fragment of it as a hard negative
    positives, negatives = pool_examples([([("v", lesion)], []), ([], [("v", fragment), ("v", elsewhere),
                                                                       ("v", on_mark)])], set(), marks)
    assert [t for _, t in positives] == [lesion]
    assert [t for _, t in negatives] == [elsewhere]


def test_mining_never_makes_a_hard_negative_of_a_lesion_found_this_round_or_before():
    cfg = HarvestConfig(hard_min_objectness=0.5, hard_top_per_volume=5)
    vm = [_row("vm", 0, _t(0, 0.9), "fa_lesion", 1.0, 0.9), _row("vm", 1, _t(50, 0.2), "fa_negative", 1.0, 0.2)]
    big = Tracklet(np.array([2, 3, 4]), np.array([[100.0, 100, 130, 130]] * 3), np.full(3, 0.95))
    earlier = Tracklet(np.array([2]), np.array([[300.0, 300, 330, 330]]), np.array([0.9]))
    candidates = [_row("vh", 0, big, score=0.95),                                               # harvested now
                  _row("vh", 1, Tracklet(np.array([5]), np.array([[105.0, 105, 112, 112]]), np.array([0.8])),
                       score=0.4),                                                              # its next slice
                  _row("vh", 2, Tracklet(np.array([2, 3]), np.array([[310.0, 310, 318, 318]] * 2),
                                         np.array([0.7, 0.7])), score=0.5),                     # in an earlier one
                  _row("vh", 3, _t(400, 0.6, z=2), score=0.3),                                  # on a mark's reach
                  _row("vh", 4, _t(200, 0.6, z=3), score=0.3)]                                  # on nothing
    lesions = {"vh": [label_extent(SliceBox(1, (400.0, 0.0, 405.0, 5.0)), 1.0, 2.5)]}
    result = mine_round(vm, {}, candidates, [], [("vh", earlier)], cfg, lesions=lesions)
    assert sorted(result.updates) == [("vh", 0, "harvested"), ("vh", 1, "rejected"), ("vh", 2, "rejected"),
                                      ("vh", 3, "rejected"), ("vh", 4, "hard_negative")]
    assert result.info["n_hard_on_lesions"] == 3 and result.info["n_hard_negatives"] == 1


def test_the_harvest_settings_veto_hard_negatives_the_lpc_accepts_or_that_span_several_slices():
    cfg = HarvestConfig(hard_min_objectness=0.5, hard_top_per_volume=5, hard_max_lpc=0.5, hard_max_slices=1)
    vm = [_row("vm", 0, _t(0, 0.9), "fa_lesion", 1.0, 0.9), _row("vm", 1, _t(50, 0.2), "fa_negative", 1.0, 0.2)]
    three = Tracklet(np.array([2, 3, 4]), np.array([[100.0, 100, 110, 110]] * 3), np.full(3, 0.7))
    candidates = [_row("vh", 0, _t(200, 0.8), lpc=0.9, score=0.72),   # the LPC calls it a lesion: vetoed
                  _row("vh", 1, three, lpc=0.1, score=0.07),           # three slices: vetoed
                  _row("vh", 2, _t(300, 0.6), lpc=None, score=0.0),    # never classified (s_c 0): kept
                  _row("vh", 3, _t(400, 0.6), lpc=0.5, score=0.3)]     # at the bound: kept
    result = mine_round(vm, {}, candidates, [], [], cfg)
    assert sorted(result.updates) == [("vh", 0, "rejected"), ("vh", 1, "rejected"), ("vh", 2, "hard_negative"),
                                      ("vh", 3, "hard_negative")]
    # V_M's hard part by the same rule
    fa_negative = [ProposalRow(1, "vm", i, row.tracklet, row.objectness, row.lpc, row.score, "fa_negative")
                   for i, row in enumerate(candidates)]
    assert [t for _, t in hard_negatives_of([], fa_negative, cfg, {})] == [candidates[2].tracklet,
                                                                           candidates[3].tracklet]


def test_pooled_examples_keep_the_latest_round_once_and_nothing_of_held_out_volumes():
    later, earlier = _t(0, 0.9), _t(0, 0.5)  # one lesion found in two rounds
    negative, its_repeat, other = _t(100, 0.4), _t(101, 0.3), _t(200, 0.4)
    positives, negatives = pool_examples([([("v", later)], [("v", negative)]),
                                          ([("v", earlier)], [("v", its_repeat), ("v", other), ("held", _t(0, 0.9))])],
                                         {"held"})
    assert [t for _, t in positives] == [later]
    assert [t for _, t in negatives] == [negative, other]


def test_threshold_is_set_on_the_v_m_proposals_a_harvest_would_count_as_new():
    box = (100.0, 100.0, 110.0, 110.0)
    marks = {"vm": [_mark("vm", 5, box)]}
    far = 300.0
    # the marked lesion (0.9), a piece of it that misses the mark's slice (0.85), an unmarked
    # lesion elsewhere (0.8) and a false positive (0.5)
    proposals = [Tracklet(np.array([5]), np.array([box]), np.array([0.9])),
                 Tracklet(np.array([6]), np.array([box]), np.array([0.85])), _t(far, 0.8, z=5), _t(far + 8, 0.5, z=5)]
    statuses = ["fa_lesion", "fa_negative", "fa_lesion", "fa_negative"]
    vm = [_row("vm", i, t, s, 1.0, t.score) for i, (t, s) in enumerate(zip(proposals, statuses))]
    info = mine_round(vm, marks, [], [], [], HarvestConfig()).info
    # counting the mark and its piece, the 95% threshold would stop above the piece, at 0.9
    assert info["threshold"] == pytest.approx(0.8)
    assert (info["vm_new_lesions_above"], info["vm_false_positives_above"], info["vm_volumes"]) == (1, 0, 1)
    assert info["precision_lower_bound"] == pytest.approx(0.05)  # one correct proposal proves little


def test_mining_sorts_candidates_and_counts_new_lesions():
    cfg = HarvestConfig(hard_min_objectness=0.5, hard_top_per_volume=5)
    vm = [_row("vm", 0, _t(0, 0.9), "fa_lesion", 1.0, 0.9), _row("vm", 1, _t(50, 0.2), "fa_negative", 1.0, 0.2)]
    marked = [("vh", _t(200, 0.9))]
    candidates = [_row("vh", 0, _t(0, 0.9), score=0.95),     # above the threshold (0.9): harvested
                  _row("vh", 1, _t(50, 0.7), score=0.3),     # below it, s_g >= 0.5: a hard negative
                  _row("vh", 2, _t(100, 0.3), score=0.1),    # below it, s_g < 0.5: rejected
                  _row("vh", 3, _t(201, 0.9), score=0.9)]    # a piece of the marked lesion
    result = mine_round(vm, {}, candidates, marked, earlier_harvested=[("vh", _t(0, 0.5))], cfg=cfg)
    assert sorted(result.updates) == [("vh", 0, "harvested"), ("vh", 1, "hard_negative"), ("vh", 2, "rejected"),
                                      ("vh", 3, "marked_piece")]
    assert result.info["threshold"] == pytest.approx(0.9)
    assert result.info["n_harvested"] == 1 and result.info["n_new"] == 0  # found in an earlier round already
    assert result.info["n_marked_pieces"] == 1


def test_mining_reports_the_rate_estimate_from_v_h_s_candidates_and_v_m_s_false_positives():
    # V_M: a lesion at 0.9, false positives at 0.5 and 0.3 in two volumes (0.5 per volume above 0.4);
    # V_H: four candidates in two volumes
    vm = [_row("vm1", 0, _t(0, 0.9), "fa_lesion", 1.0, 0.9), _row("vm1", 1, _t(50, 0.5), "fa_negative", 1.0, 0.5),
          _row("vm2", 0, _t(0, 0.3), "fa_negative", 1.0, 0.3)]
    candidates = [_row("vh1", i, _t(60.0 * i, s), score=s) for i, s in enumerate((0.95, 0.6))]
    candidates += [_row("vh2", i, _t(60.0 * i, s), score=s) for i, s in enumerate((0.55, 0.4))]
    info = mine_round(vm, {}, candidates, [], [], HarvestConfig(), vh_volumes=2).info
    rate = info["estimates"]["fp_rate"]
    assert info["threshold"] == pytest.approx(0.9) and rate["precision"] == pytest.approx(1.0)
    # at 0.4: 4 candidates, 0.5 x 2 volumes = 1 expected false positive (0.75); at 0.55 none: 1.0
    assert rate["own_threshold"] == pytest.approx(0.55)
    cfg = HarvestConfig(threshold="fp_rate", precision=0.7)
    result = mine_round(vm, {}, candidates, [], [], cfg, vh_volumes=2)
    assert result.info["threshold"] == pytest.approx(0.4) and result.info["n_harvested"] == 4


def test_a_lesion_reviewers_rejected_is_not_harvested_again():
    cfg = HarvestConfig(hard_min_objectness=0.5, hard_top_per_volume=5)
    vm = [_row("vm", 0, _t(0, 0.9), "fa_lesion", 1.0, 0.9), _row("vm", 1, _t(50, 0.2), "fa_negative", 1.0, 0.2)]
    candidates = [_row("vh", 0, _t(0, 0.9), score=0.95), _row("vh", 1, _t(100, 0.9), score=0.95)]
    result = mine_round(vm, {}, candidates, [], [], cfg, reviewer_rejected=[("vh", _t(1, 0.95))])
    assert sorted(result.updates) == [("vh", 0, "hard_negative"), ("vh", 1, "harvested")]
    assert result.info["n_rejected_by_reviewers"] == 1 and result.info["n_harvested"] == 1
    assert result.info["n_marked_pieces"] == 0 and result.info["n_hard_negatives"] == 1


def test_outputs_keep_each_lesion_once_with_fused_scores(tmp_path):
    r1 = _row("vh", 0, _t(0, 0.8), "harvested", lpc=0.5, score=0.4)  # s = s_g * s_c (w = 1)
    r2 = _row("vh", 3, _t(0, 0.9), "harvested", lpc=0.9, score=0.81)  # the same lesion, found again in round 2
    other = _row("vh", 4, _t(100, 0.6), "harvested", lpc=0.5, score=0.3)
    r2 = ProposalRow(2, r2.volume, r2.idx, r2.tracklet, r2.objectness, r2.lpc, r2.score, r2.status)
    lesions = harvested_lesions({1: [r1], 2: [r2, other]})
    assert [(x.round, x.tracklet.score) for x in lesions] == [(2, pytest.approx(0.81)), (2, pytest.approx(0.3))]
    layout = RunLayout(tmp_path)
    write_round_outputs(layout, 2, [r2, other], [("vh", _t(300, 0.7))])
    assert [t.score for t in read_tracklets(layout.round_harvested(2))["vh"]] == [pytest.approx(0.81),
                                                                                  pytest.approx(0.3)]
    assert len(read_tracklets(layout.round_hard_negatives(2))["vh"]) == 1
    # a round that ranked by the LPG alone (w = 0, s = s_g): its lesions carry s_g, not s_g * s_c
    alone = _row("vh", 5, _t(200, 0.7), "harvested", lpc=0.2, score=0.7)
    (lesion,) = harvested_lesions({3: [alone]})
    assert (lesion.tracklet.score, lesion.s, lesion.s_c) == (pytest.approx(0.7), 0.7, 0.2)
    write_harvested_csv(tmp_path / "h.csv", [lesion])
    assert (tmp_path / "h.csv").read_text().splitlines()[1].split(",")[-4:-1] == ["0.7", "0.2", "0.7"]
    marks = {"vh": [_mark("vh", 0, (200.0, 0.0, 205.0, 5.0))]}
    known = {"vh": [Tracklet(np.array([0, 1]), np.array([[200.0, 0, 205, 5], [200.0, 0, 206, 6]]), np.ones(2))]}
    completed = completed_annotations({"vm": [SliceBox(3, (0.0, 0.0, 5.0, 5.0))]}, ["vh"], marks, known, lesions)
    assert completed["vm"][0].z_range == (3.0, 3.0)  # no proposal covers it: its own slice
    assert completed["vh"][0].z_range == (0.0, 1.0) and completed["vh"][0].box_xyxy_px[2] == 206.0
    assert len(completed["vh"]) == 3  # the mark and the two harvested lesions


def test_a_round_that_harvests_nothing_says_why():
    cfg = HarvestConfig()
    # V_M's top new proposal is a false positive: no threshold keeps 95% precision
    vm = [_row("vm", 0, _t(0, 0.9), "fa_negative", 1.0, 0.9), _row("vm", 1, _t(50, 0.8), "fa_lesion", 1.0, 0.8)]
    info = mine_round(vm, {}, [_row("vh", 0, _t(0, 0.9), score=0.95)], [], [], cfg).info
    assert info["n_harvested"] == 0 and info["threshold"] is None
    assert "no score threshold keeps 95% precision on V_M" in info["nothing_harvested_because"]
    assert "0 lesion(s), then a false positive at s = 0.900" in info["nothing_harvested_because"]
    # a threshold, but no candidate reaches it
    vm = [_row("vm", 0, _t(0, 0.9), "fa_lesion", 1.0, 0.9)]
    info = mine_round(vm, {}, [_row("vh", 0, _t(0, 0.9), score=0.5)], [], [], cfg).info
    assert "no V_H candidate scored at or above the threshold 0.900 (the highest is 0.500)" in \
        info["nothing_harvested_because"]
    # nothing in V_M to measure on
    info = mine_round([], {}, [], [], [], cfg).info
    assert info["nothing_harvested_because"].startswith("V_M gave no proposal")
    # something harvested: no reason
    info = mine_round(vm, {}, [_row("vh", 0, _t(0, 0.9), score=0.95)], [], [], cfg).info
    assert info["n_harvested"] == 1 and info["nothing_harvested_because"] is None


def test_mining_by_the_pooled_rule_reports_each_rule():
    from lesion_harvester.harvest.precision import MarkRates, MarksEvidence

    cfg = HarvestConfig(threshold="combined", calibration_marks=0.2)
    rates = MarkRates(np.array([[1, 1, 1, 1]]), np.array([[2, 2, 2, 2]]))  # half of the lesions marked
    # V_M's top new proposal is a false positive; the calibration volumes found 3 marked lesions at 0.65 and
    # more, and hold new proposals at 0.7, 0.6, 0.5 and 0.4
    vm = [_row("vm", 0, _t(0, 0.9), "fa_negative", 1.0, 0.9), _row("vm", 1, _t(50, 0.7), "fa_lesion", 1.0, 0.7)]
    marks = MarksEvidence(np.array([0.8, 0.7, 0.65, 0.7, 0.6, 0.5, 0.4]), np.array([1, 2, 1, -1, -1, -1, -1]),
                          np.zeros(7, dtype=int), rates)
    candidates = [_row("vh", 0, _t(0, 0.9), score=0.75), _row("vh", 1, _t(30, 0.9), score=0.3)]
    info = mine_round(vm, {}, candidates, [], [], cfg, marks).info
    # pooled: each mark stands for one unmarked lesion; at 0.5 (1 + 3) / (2 + 3) = 0.8, at 0.6 (1 + 3) / (2 + 2)
    assert info["threshold"] == pytest.approx(0.6) and info["n_harvested"] == 1
    assert info["estimates"]["vm"]["own_threshold"] is None  # the paper's rule finds none here
    assert info["estimates"]["combined"]["own_threshold"] == pytest.approx(0.6)
    assert info["estimates"]["combined"]["precision"] == 1.0 and info["threshold_rule"] == "combined"
    # where no threshold reaches the precision, the reason names the rule and the best it estimates
    few = MarksEvidence(np.array([0.8, 0.7, 0.6]), np.array([-1, -1, 3]), np.zeros(3, dtype=int), rates)
    info = mine_round(vm, {}, candidates, [], [], cfg, few).info
    assert info["n_harvested"] == 0 and "as the 'combined' rule estimates it" in info["nothing_harvested_because"]


class _Constant(torch.nn.Module):
    """An LPC that gives every patch the same probability."""

    def __init__(self, probability: float):
        super().__init__()
        self.logit = float(np.log(probability / (1 - probability)))

    def forward(self, x):
        return torch.full((len(x),), self.logit)


def test_lpc_probabilities_score_v_m_out_of_fold_and_v_h_by_the_mean_of_the_folds():
    hu = normalize_hu(np.full((8, 32, 32), 40.0)).astype(np.float16)
    volumes = {k: PreparedVolume(k, hu, (0, 0), 1.0, (2.0, 1.0, 1.0), (8, 32, 32)) for k in ("a", "b", "h")}
    cfg = LPCConfig(patch_px=16, pad_px=4.0, widen_factor=0.125, min_objectness=0.3, max_per_volume=2,
                    windows_hu=((-160.0, 240.0),))

    def at(z: int, score: float) -> Tracklet:
        return Tracklet(np.array([z]), np.array([[8.0, 8.0, 16.0, 16.0]]), np.array([score]))

    vm = [_row("a", 0, at(2, 0.9), "fa_lesion"), _row("a", 1, at(4, 0.2), "fa_negative"),  # 0.2: not classified
          _row("b", 0, at(3, 0.8), "fa_negative")]
    candidates = [_row("h", 0, at(2, 0.9)), _row("h", 1, at(3, 0.7)), _row("h", 2, at(4, 0.5))]  # 2 per volume
    models = [_Constant(0.2), _Constant(0.6)]  # fold 1 holds a out, fold 2 holds b out
    probability = lpc_probabilities(models, [["a"], ["b"]], vm, candidates, volumes.__getitem__, cfg)
    assert probability.keys() == {("a", 0), ("b", 0), ("h", 0), ("h", 1)}
    assert probability[("a", 0)] == pytest.approx(0.2) and probability[("b", 0)] == pytest.approx(0.6)
    assert probability[("h", 0)] == pytest.approx(0.4) and probability[("h", 1)] == pytest.approx(0.4)
