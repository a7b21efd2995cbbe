"""Mining rules and threshold selection on hand-made scores."""

import numpy as np
import pytest

from lesion_harvester.harvest.mine import (
    average_precision,
    choose_fusion_exponent,
    fused_score,
    select_hard_negatives,
)
from lesion_harvester.harvest.precision import precision_threshold
from lesion_harvester.harvest.verify import (
    dedupe,
    duplicates_of,
    known_extents,
    label_extent,
    match_known,
    on_lesions,
    touches,
    tracklet_extent,
)
from lesion_harvester.structures import Box3D, SliceBox, Tracklet


def test_threshold_is_the_lowest_keeping_95_percent_precision():
    # scores descending with labels: 20 lesions, then a miss, then 5 lesions, then misses
    scores = np.linspace(1.0, 0.01, 40)
    labels = np.array([1] * 20 + [0] + [1] * 5 + [0] * 14, dtype=bool)
    t = precision_threshold(scores, labels)
    # at index 25 (26 kept, 25 lesions) precision 0.96; at 26 it is 25/27 = 0.926
    assert t == pytest.approx(scores[25])
    assert precision_threshold(scores, labels, precision=0.99) == pytest.approx(scores[19])


def test_threshold_does_not_pass_a_dip():
    # precision dips below 95% early and recovers later: the threshold stops at the dip
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05])
    labels = np.array([1, 0, 1, 1, 1, 1, 1, 1, 1, 1], dtype=bool)
    assert precision_threshold(scores, labels) == pytest.approx(0.9)


def test_threshold_edge_cases():
    assert precision_threshold(np.array([0.9, 0.8]), np.array([False, True])) == float("inf")
    assert precision_threshold(np.array([]), np.array([])) == float("inf")
    assert precision_threshold(np.array([0.5, 0.4]), np.array([True, True])) == pytest.approx(0.4)
    # a tie is never split: [0.7 lesion, 0.7 miss] has precision 0.5 at 0.7
    assert precision_threshold(np.array([0.9, 0.7, 0.7]), np.array([True, True, False])) == pytest.approx(0.9)


def test_fusion_exponent_follows_the_score_that_separates_v_m():
    rng = np.random.default_rng(0)
    labels = np.array([1] * 20 + [0] * 60, dtype=bool)
    sharp = np.where(labels, rng.uniform(0.6, 0.9, 80), rng.uniform(0.05, 0.5, 80))  # separates the classes
    vague = rng.uniform(0.2, 0.95, 80)  # unrelated to the labels
    exponents = (1.0, 2.0, 0.5, 0.25, 0.0)
    # a sharp LPG and a vague LPC: ranking by the LPG alone admits every lesion
    w, table = choose_fusion_exponent(sharp, vague, labels, exponents)
    assert w == 0.0 and table[-1]["admitted_lesions"] == 20 and table[-1]["ap"] == pytest.approx(1.0)
    # a vague LPG and a sharp LPC: the LPC must weigh in, and more is better
    w, table = choose_fusion_exponent(vague, sharp, labels, exponents)
    assert w == 2.0 and [row["exponent"] for row in table] == list(exponents)
    # the paper's product alone
    assert choose_fusion_exponent(vague, sharp, labels, (1.0,))[0] == 1.0
    assert fused_score([0.5], [0.25], 0.5) == pytest.approx([0.25])
    assert fused_score([0.5], [0.0], 0.0) == pytest.approx([0.5])  # w = 0: the LPG alone, even unclassified
    assert average_precision([0.9, 0.8, 0.7], [True, False, True]) == pytest.approx((1 + 2 / 3) / 2)


def _far(i: int, score: float, z: int = 0) -> Tracklet:
    """A one-slice proposal far from every other one built here (i-th place on a grid)."""
    x = 40.0 * i
    return Tracklet(np.array([z]), np.array([[x, 0.0, x + 10, 10.0]]), np.array([score]))


def test_hard_negatives_are_the_top_five_of_those_at_or_above_one_half():
    # volume a: seven leftovers with s_g >= 0.5 (one exactly 0.5), the paper's rule keeps the top five;
    # volume b: one at 0.4999 (below the cut, never a hard negative, however few the volume has)
    s_g = np.array([0.95, 0.9, 0.8, 0.7, 0.6, 0.55, 0.5, 0.3, 0.4999])
    items = [("a", _far(i, s)) for i, s in enumerate(s_g[:8])] + [("b", _far(0, s_g[8]))]
    eligible = np.ones(len(items), dtype=bool)
    hard, on_lesion = select_hard_negatives(items, s_g, eligible, {})
    assert np.flatnonzero(hard).tolist() == [0, 1, 2, 3, 4]
    assert not on_lesion.any()
    # the 0.5 boundary is included: with room for seven, 0.5 is in and 0.3 and 0.4999 are out
    hard, _ = select_hard_negatives(items, s_g, eligible, {}, top_per_volume=7)
    assert np.flatnonzero(hard).tolist() == [0, 1, 2, 3, 4, 5, 6]
    # proposals above the threshold (not eligible) take no place among the five
    eligible[[0, 1]] = False
    hard, _ = select_hard_negatives(items, s_g, eligible, {})
    assert np.flatnonzero(hard).tolist() == [2, 3, 4, 5, 6]


def test_the_lpc_and_slice_vetoes_remove_candidates_before_the_top_five_are_taken():
    # seven leftovers with s_g >= 0.5 in one volume; the LPC calls 1 and 3 lesions (s_c 0.9, 0.51),
    # 4 spans three slices: with both vetoes they give their places to 5 and 6
    s_g = np.array([0.95, 0.9, 0.8, 0.7, 0.6, 0.55, 0.5])
    s_c = np.array([0.1, 0.9, 0.5, 0.51, 0.0, 0.2, 0.3])
    items = [("a", _far(i, s)) for i, s in enumerate(s_g)]
    items[4] = ("a", Tracklet(np.array([3, 4, 5]), np.array([[160.0, 0, 170, 10]] * 3), np.full(3, 0.6)))
    eligible = np.ones(7, dtype=bool)
    assert np.flatnonzero(select_hard_negatives(items, s_g, eligible, {})[0]).tolist() == [0, 1, 2, 3, 4]
    hard, _ = select_hard_negatives(items, s_g, eligible, {}, probability=s_c, max_probability=0.5)
    assert np.flatnonzero(hard).tolist() == [0, 2, 4, 5, 6]  # s_c = 0.5 is at the bound: kept
    hard, _ = select_hard_negatives(items, s_g, eligible, {}, max_slices=1)
    assert np.flatnonzero(hard).tolist() == [0, 1, 2, 3, 5]
    hard, _ = select_hard_negatives(items, s_g, eligible, {}, probability=s_c, max_probability=0.5, max_slices=1)
    assert np.flatnonzero(hard).tolist() == [0, 2, 5, 6]
    # max_slices=3 admits the three-slice proposal again; max_probability=1 ignores s_c
    hard, _ = select_hard_negatives(items, s_g, eligible, {}, probability=s_c, max_probability=1.0, max_slices=3)
    assert np.flatnonzero(hard).tolist() == [0, 1, 2, 3, 4]


def test_a_proposal_on_a_lesion_is_never_a_hard_negative_and_takes_no_place():
    lesion = Box3D((40.0, 0.0, 50.0, 10.0), (2.0, 6.0))  # where proposal 1 lies, on slices 2-6
    s_g = np.array([0.9, 0.85, 0.8, 0.7, 0.65, 0.6, 0.55])
    items = [("a", _far(i, s, z=4)) for i, s in enumerate(s_g)]
    items[2] = ("a", Tracklet(np.array([7]), np.array([[44.0, 2.0, 48.0, 6.0]]), np.array([0.8])))  # a slice beyond
    hard, on_lesion = select_hard_negatives(items, s_g, np.ones(7, dtype=bool), {"a": [lesion]})
    assert on_lesion.tolist() == [False, True, False, False, False, False, False]
    assert np.flatnonzero(hard).tolist() == [0, 2, 3, 4, 5]  # the sixth takes the place of the one on the lesion
    # the same proposals in another volume: that volume's lesions only
    hard, on_lesion = select_hard_negatives([("b", t) for _, t in items], s_g, np.ones(7, dtype=bool),
                                            {"a": [lesion]})
    assert not on_lesion.any() and hard.sum() == 5


def test_the_touch_rule_for_fragments_neighbours_and_one_slice_labels():
    lesion = Tracklet(np.arange(10, 16), np.array([[100.0, 100, 130, 130]] * 6), np.ones(6))
    extent = tracklet_extent(lesion)
    assert extent.z_range == (9.0, 16.0)  # grown by a slice up and down
    fragment = Tracklet(np.array([14, 15]), np.array([[110.0, 110, 118, 118]] * 2), np.ones(2))
    next_slice = Tracklet(np.array([16]), np.array([[125.0, 125, 140, 140]]), np.ones(1))
    beyond = Tracklet(np.array([17, 18]), np.array([[100.0, 100, 130, 130]] * 2), np.ones(2))
    beside = Tracklet(np.array([12]), np.array([[131.0, 100, 150, 130]]), np.ones(1))  # one pixel right of it
    sharing_a_pixel = Tracklet(np.array([12]), np.array([[130.0, 100, 150, 130]]), np.ones(1))
    assert [touches(t, [extent]) for t in (fragment, next_slice, beyond, beside, sharing_a_pixel)] == [
        True, True, False, False, True]
    # a RECIST mark on slice 20, 20 px long at 0.75 mm/px and 2.5 mm slices: it may reach 3 slices each way
    label = label_extent(SliceBox(20, (0.0, 0.0, 20.0, 10.0)), pixel_mm=0.75, slice_mm=2.5)
    assert label.z_range == (17.0, 23.0)
    assert label_extent(SliceBox(20, (0.0, 0.0, 20.0, 10.0)), 0.75, float("nan")).z_range == (20.0, 20.0)
    known = known_extents([("v", lesion)], {"v": [SliceBox(20, (0.0, 0.0, 20.0, 10.0))]}, {"v": (2.5, 0.75, 0.75)})
    assert [e.z_range for e in known["v"]] == [(9.0, 16.0), (17.0, 23.0)]
    probe = [("v", Tracklet(np.array([23]), np.array([[5.0, 5, 8, 8]]), np.ones(1))),
             ("v", Tracklet(np.array([24]), np.array([[5.0, 5, 8, 8]]), np.ones(1))), ("w", fragment)]
    assert on_lesions(probe, known).tolist() == [True, False, False]


def test_verification_by_p3d():
    mark = SliceBox(5, (100.0, 100.0, 119.0, 119.0))
    on_slice = Tracklet(np.array([4, 5, 6]), np.array([[100.0, 100, 119, 119]] * 3), np.ones(3))
    beside = Tracklet(np.array([6, 7]), np.array([[100.0, 100, 119, 119]] * 2), np.ones(2))
    elsewhere = Tracklet(np.array([5]), np.array([[300.0, 300, 320, 320]]), np.ones(1))
    assert match_known([on_slice, beside, elsewhere], [mark]).tolist() == [True, False, False]
    assert match_known([on_slice], []).tolist() == [False]


def _flat(z_indices, box=(100.0, 100.0, 119.0, 119.0)):
    z = np.asarray(z_indices)
    return Tracklet(z, np.array([box] * len(z)), np.ones(len(z)))


def test_pieces_of_one_lesion_a_slice_apart_are_one_lesion():
    lesion, piece = _flat([17, 18]), _flat([16])
    two_apart, elsewhere = _flat([20]), _flat([16], (300.0, 300.0, 320.0, 320.0))
    kept = dedupe([("a", lesion), ("a", piece), ("a", two_apart), ("a", elsewhere), ("b", piece)])
    assert [(k, t) for k, t in kept] == [("a", lesion), ("a", two_apart), ("a", elsewhere), ("b", piece)]


def test_a_candidate_that_continues_a_marked_lesion_is_not_new():
    # verification left the piece a candidate (it misses the mark's slice); mining must not call it new
    mark = SliceBox(18, (100.0, 100.0, 119.0, 119.0))
    marked, piece = _flat([17, 18]), _flat([16])
    assert match_known([marked, piece], [mark]).tolist() == [True, False]
    known = [("a", marked)]
    candidates = [("a", piece), ("a", _flat([25])), ("b", piece)]
    assert duplicates_of(candidates, known).tolist() == [True, False, False]


def test_precision_lower_bound_is_clopper_pearson():
    from lesion_harvester.harvest.precision import precision_lower_bound

    assert precision_lower_bound(9, 0) == pytest.approx(0.05 ** (1 / 9))  # no failure in 9: p^9 = 0.05
    assert precision_lower_bound(0, 3) == 0.0
    assert precision_lower_bound(95, 5) < 0.95 < precision_lower_bound(950, 10)


def test_the_exponent_can_be_chosen_by_the_whole_ranking():
    # the LPC doubts two lesions and trusts two false positives: by AP the LPG alone (w = 0) wins
    s_g = np.array([0.95, 0.9, 0.8, 0.7, 0.6, 0.5])
    s_c = np.array([0.9, 0.9, 0.1, 0.2, 0.9, 0.8])
    lesion = np.array([1, 1, 1, 1, 0, 0], dtype=bool)
    w, table = choose_fusion_exponent(s_g, s_c, lesion, (1.0, 0.0), by="ap")
    assert w == 0.0 and table[1]["ap"] == 1.0 > table[0]["ap"]
    assert choose_fusion_exponent(s_g, s_c, lesion, (1.0, 0.0))[0] == 0.0  # by admitted lesions too: 4 against 2
    w, _ = choose_fusion_exponent(s_g, np.ones(6), lesion, (1.0, 0.0), by="ap")
    assert w == 1.0  # a tie in AP: the earlier listed


def test_fusion_by_ap_passes_over_an_exponent_that_admits_no_lesion():
    # s_g ranks better overall but puts a false positive first: its 95% threshold admits nothing
    s_g = np.array([0.9, 0.85, 0.8, 0.7, 0.6, 0.5, 0.45, 0.4])
    s_c = np.array([0.01, 1.0, 0.1, 0.1, 0.1, 0.9, 0.9, 0.9])  # the product: a lesion first, then three negatives
    lesion = np.array([0, 1, 1, 1, 1, 0, 0, 0], dtype=bool)
    table = choose_fusion_exponent(s_g, s_c, lesion, (1.0, 0.0), by="ap")[1]
    assert table[1]["ap"] > table[0]["ap"] and table[1]["admitted_lesions"] == 0 < table[0]["admitted_lesions"]
    assert choose_fusion_exponent(s_g, s_c, lesion, (1.0, 0.0), by="ap")[0] == 1.0
    # when no exponent admits a lesion, the best AP still decides
    none = np.array([0, 0, 0, 0, 0, 0, 0, 1], dtype=bool)
    w, table = choose_fusion_exponent(s_g, np.full(8, 0.5), none, (1.0, 0.0), by="ap")
    assert all(row["admitted_lesions"] == 0 for row in table) and w == 1.0
