import pickle

import numpy as np
import pytest

from lesion_harvester.errors import DataError, UnsafePickleError
from lesion_harvester.io.annotations import (
    read_any_boxes,
    read_boxes_3d,
    read_slice_boxes,
    read_tracklets,
    write_boxes_3d,
    write_slice_boxes,
    write_tracklets,
    write_tracklets_csv,
)
from lesion_harvester.io.safe_pickle import safe_load_pickle
from lesion_harvester.structures import Box3D, SliceBox, Tracklet
from tests.conftest import shared_path


@pytest.mark.parametrize(
    "name, volumes, boxes",
    [("Revised-Train100.pkl", 100, 420), ("Revised-Train744.pkl", 744, 3033), ("Revised-Test1071.pkl", 1071, 3665)],
)
def test_released_complete_annotations(name, volumes, boxes):
    data = read_slice_boxes(shared_path("deeplesion_annotation", name))
    assert len(data) == volumes
    assert sum(len(v) for v in data.values()) == boxes
    assert not any(k.endswith(".annot") for k in data)
    if name == "Revised-Test1071.pkl":
        assert data["001344_01_01_012-024"] == [SliceBox(6, (215.383, 176.983, 267.122, 220.374))]
        assert data["001347_01_01_017-029"] == []


def test_released_3d_boxes_round_z_noise():
    data = read_boxes_3d(shared_path("deeplesion_annotation", "3D-Box.pkl"))
    assert len(data) == 272 and sum(len(v) for v in data.values()) == 874
    assert data["000001_01_01_103-115"][0].z_range == (5.0, 6.0)
    zs = [z for boxes in data.values() for b in boxes for z in b.z_range]
    assert all(z * 2 == int(z * 2) for z in zs)


def test_round_trips(tmp_path):
    boxes = {
        "000001_01_01_001-010": [SliceBox(3, (1.0, 2.0, 30.0, 40.0)), SliceBox(3, (5.0, 5.0, 9.0, 9.0))],
        "000002_01_01_005-020": [],
    }
    write_slice_boxes(tmp_path / "a.pkl", boxes, annot_suffix=True)
    raw = pickle.load(open(tmp_path / "a.pkl", "rb"))
    assert raw["000001_01_01_001-010.annot"] == {3: [[1.0, 2.0, 30.0, 40.0, 3.0, 3.0], [5.0, 5.0, 9.0, 9.0, 3.0, 3.0]]}
    assert read_slice_boxes(tmp_path / "a.pkl") == boxes
    b3 = {"k_001-002": [Box3D((1.0, 2.0, 3.0, 4.0), (5.5, 6.5))]}
    write_boxes_3d(tmp_path / "b.pkl", b3)
    assert read_boxes_3d(tmp_path / "b.pkl") == b3
    t = Tracklet(np.array([4, 5]), np.array([[1.0, 2, 3, 4], [2.0, 3, 4, 5]]), np.array([0.2, 0.9]))
    write_tracklets(tmp_path / "c.pkl", {"k": [t]})
    raw = pickle.load(open(tmp_path / "c.pkl", "rb"))
    assert raw["k"] == [[(4, [1.0, 2.0, 3.0, 4.0, 0.2]), (5, [2.0, 3.0, 4.0, 5.0, 0.9])]]
    back = read_tracklets(tmp_path / "c.pkl")["k"][0]
    assert back.score == 0.9 and back.key_index == 1 and np.array_equal(back.z_indices, [4, 5])
    write_tracklets_csv(tmp_path / "c.csv", {"k": [t]})
    assert (tmp_path / "c.csv").read_text().splitlines()[1].startswith("k,0,1.0,2.0,4.0,5.0,4,5,5,0.9,2")


def test_read_any_boxes_accepts_every_format(tmp_path):
    write_boxes_3d(tmp_path / "b.pkl", {"k": [Box3D((1.0, 2.0, 3.0, 4.0), (5.5, 7.0))]})
    tracklet = read_any_boxes(tmp_path / "b.pkl")["k"][0]
    assert list(tracklet.z_indices) == [6, 7]
    write_slice_boxes(tmp_path / "a.pkl", {"k": [SliceBox(2, (1.0, 1.0, 5.0, 5.0))]})
    assert list(read_any_boxes(tmp_path / "a.pkl")["k"][0].z_indices) == [2]


class _Exploit:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.target}",))


def test_malicious_pickle_never_runs(tmp_path):
    flag = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"k": _Exploit(flag)}, protocol=2))
    with pytest.raises(UnsafePickleError) as err:
        read_slice_boxes(path)
    assert str(path) in str(err.value) and "system" in str(err.value)
    assert not flag.exists()


def test_forbidden_builtin_global(tmp_path):
    path = tmp_path / "eval.pkl"
    # GLOBAL builtins.eval, then call it: a classic payload
    path.write_bytes(b"cbuiltins\neval\n(S'1+1'\ntR.")
    with pytest.raises(UnsafePickleError, match="builtins.eval"):
        safe_load_pickle(path)


def test_numpy_arrays_are_allowed(tmp_path):
    path = tmp_path / "arr.pkl"
    path.write_bytes(pickle.dumps({"k": [[(3, np.array([1.0, 2.0, 3.0, 4.0, 0.5]))]]}, protocol=2))
    assert read_tracklets(path)["k"][0].score == 0.5


@pytest.mark.parametrize(
    "payload, message",
    [
        ([1, 2], "expected a dict keyed by sub-volume"),
        ({"k": {3: [[5.0, 5.0, 1.0, 9.0, 3, 3]]}}, "x2 < x1"),
        ({"k": {-1: [[1.0, 1.0, 2.0, 2.0, 3, 3]]}}, "non-negative integer"),
        ({"k": {2: [["a", 1.0, 2.0, 2.0]]}}, "expected numbers"),
    ],
)
def test_malformed_annotations(tmp_path, payload, message):
    path = tmp_path / "bad.pkl"
    path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(DataError, match=message):
        read_slice_boxes(path)


def test_empty_and_garbage_files(tmp_path):
    (tmp_path / "e.pkl").write_bytes(b"")
    with pytest.raises(DataError, match="empty file"):
        read_slice_boxes(tmp_path / "e.pkl")
    (tmp_path / "g.pkl").write_bytes(b"hello world")
    with pytest.raises(DataError, match="not a readable pickle"):
        read_slice_boxes(tmp_path / "g.pkl")
