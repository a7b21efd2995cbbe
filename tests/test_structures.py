"""structures.py: the helpers every stage shares."""

import numpy as np
import pytest

from lesion_harvester.structures import Box3D, RecistMark, Tracklet, group_by_volume, marks_to_tracklets


def test_rescaling_a_tracklet_keeps_its_boxes():
    t = Tracklet(np.array([1, 2]), np.arange(8.0).reshape(2, 4), np.array([0.2, 0.8]))
    half = t.scaled(0.5)
    assert np.allclose(half.scores, [0.1, 0.4]) and half.boxes_xyxy_px is t.boxes_xyxy_px
    assert np.allclose(t.with_objectness(0.4).scores, [0.1, 0.4]) and t.with_objectness(0.4).score == 0.4
    assert np.allclose(t.scores, [0.2, 0.8])  # the original is unchanged
    assert t.key_z == 2


def test_group_by_volume_keeps_first_seen_order():
    grouped = group_by_volume([("b", 1), ("a", 2), ("b", 3)])
    assert list(grouped) == ["b", "a"] and grouped == {"b": [1, 3], "a": [2]}
    assert group_by_volume([]) == {}


def test_single_slice_and_3d_box_tracklets():
    t = Tracklet.single_slice(3, (1.0, 2.0, 3.0, 4.0), 0.7)
    assert t.z_indices.tolist() == [3] and t.boxes_xyxy_px.tolist() == [[1.0, 2.0, 3.0, 4.0]] and t.score == 0.7
    from_box = Tracklet.from_box_3d(Box3D((1.0, 2.0, 3.0, 4.0), (5.5, 7.0)))
    assert from_box.z_indices.tolist() == [6, 7] and np.all(from_box.scores == 1.0)
    assert Tracklet.from_box_3d(Box3D((1.0, 2.0, 3.0, 4.0), (5.2, 5.8))) is None
    mark = RecistMark("k", 4, (0, 0, 9, 9), (0, 9, 9, 0), (0.0, 0.0, 9.0, 9.0))
    (only,) = marks_to_tracklets({"k": [mark]}, score=2.0)["k"]
    assert only.z_indices.tolist() == [4] and only.score == 2.0


def test_a_tracklet_needs_matching_shapes():
    with pytest.raises(ValueError, match="n >= 1"):
        Tracklet(np.array([], dtype=np.int64), np.zeros((0, 4)), np.zeros(0))

