"""The tracker on hand-made box sequences."""

import numpy as np
import pytest

from lesion_harvester.config import StackConfig
from lesion_harvester.stacking.kalman import KalmanBoxTracker, box_to_measurement, state_to_box
from lesion_harvester.stacking.stack import stack_proposals

A = np.array([100.0, 100.0, 140.0, 140.0])
B = np.array([300.0, 100.0, 330.0, 130.0])
EMPTY = (np.zeros((0, 4)), np.zeros(0))


def slices(*items):
    return [(np.array(boxes, dtype=float).reshape(-1, 4), np.array(scores, dtype=float)) for boxes, scores in items]


def test_kalman_state_round_trip_and_constant_velocity():
    assert np.allclose(state_to_box(np.r_[box_to_measurement(A), 0, 0, 0]), A)
    tracker = KalmanBoxTracker(A)
    for k in range(1, 6):  # the box moves 2 px right per slice
        tracker.predict()
        tracker.update(A + np.array([2.0, 0, 2.0, 0]) * k)
    predicted = tracker.predict()
    assert predicted[0] == pytest.approx(A[0] + 12, abs=1.0)


def test_links_a_lesion_over_slices():
    seq = slices(([A], [0.3]), ([A + 1], [0.9]), ([A + 2], [0.5]), EMPTY)
    (t,) = stack_proposals(seq)
    assert t.z_indices.tolist() == [0, 1, 2] and t.score == 0.9 and t.key_index == 1
    assert np.allclose(t.boxes_xyxy_px[1], A + 1)  # the proposal boxes are kept, not the filter state


def test_threshold_drops_weak_proposals():
    seq = slices(([A], [0.05]), ([A], [0.5]), ([A], [0.1]))
    (t,) = stack_proposals(seq, StackConfig(score_threshold=0.1))
    assert t.z_indices.tolist() == [1]


def test_gap_of_one_slice_is_bridged():
    seq = slices(([A], [0.8]), ([A], [0.7]), EMPTY, ([A + 1], [0.6]), ([A + 1], [0.5]))
    (t,) = stack_proposals(seq)
    assert t.z_indices.tolist() == [0, 1, 2, 3, 4]
    assert np.allclose(t.boxes_xyxy_px[2], A + 0.5) and t.scores[2] == 0.6


def test_gap_of_two_slices_stays_apart():
    seq = slices(([A], [0.8]), EMPTY, EMPTY, ([A], [0.6]))
    assert len(stack_proposals(seq)) == 2


def test_low_overlap_breaks_the_link():
    shifted = A + np.array([15.0, 0, 15.0, 0])  # IoU about 0.45
    seq = slices(([A], [0.8]), ([shifted], [0.7]))
    assert len(stack_proposals(seq)) == 2


def test_two_lesions_side_by_side():
    seq = slices(([A, B], [0.9, 0.4]), ([A + 1, B + 1], [0.8, 0.5]), ([B + 2], [0.6]))
    tracks = stack_proposals(seq)
    assert len(tracks) == 2
    by_start = {round(t.boxes_xyxy_px[0][0]): t for t in tracks}
    assert by_start[100].z_indices.tolist() == [0, 1]
    assert by_start[300].z_indices.tolist() == [0, 1, 2] and by_start[300].score == 0.6
    assert tracks[0].score >= tracks[1].score  # sorted by objectness


def test_fusion_of_tracks_broken_by_a_missed_match():
    # slice 1 has two overlapping proposals; Hungarian gives A+1 to the track, the duplicate starts a new
    # track that continues on slice 2 while the first ends: the extension fuses them
    near = A + np.array([1.0, 1.0, 1.0, 1.0])
    seq = slices(([A], [0.5]), ([A + 0.5, near], [0.6, 0.4]), ([near], [0.7]))
    tracks = stack_proposals(seq)
    assert len(tracks) == 1 and tracks[0].z_indices.tolist() == [0, 1, 2]
    assert tracks[0].scores.tolist() == [0.5, 0.6, 0.7]


def test_fusion_chains_and_keeps_unrelated_tracks_apart():
    from lesion_harvester.stacking.stack import fuse_tracks
    from lesion_harvester.structures import Tracklet

    def track(z0, z1, box, score=0.5):
        return Tracklet.from_pairs([(z, [*box, score]) for z in range(z0, z1 + 1)])

    # a-b and b-c meet after the one-slice extension (a and c never do): all three fuse; d lies elsewhere,
    # e meets c's range but not its box
    a, b, c = track(0, 2, A), track(4, 5, A + 1), track(7, 9, A + 2, 0.9)
    d, e = track(0, 9, B), track(8, 9, A + 60)
    fused = fuse_tracks([c, e, a, d, b], StackConfig().fuse_iou)
    assert len(fused) == 3
    whole = next(t for t in fused if t.z_indices[0] == 0 and t.boxes_xyxy_px[0][0] == A[0])
    assert whole.z_indices.tolist() == list(range(10))  # the one-slice gaps 3 and 6 interpolated
    assert whole.score == 0.9
    assert np.allclose(whole.boxes_xyxy_px[3], A + 0.5) and whole.scores[3] == 0.5
