"""Hostile annotation files and datasets: malformed pickles, boxes outside their volume, splits naming
volumes the dataset lacks, datasets without volumes. Each is one line naming the file and the problem,
exit code 2, before training or scanning starts.

The datasets are written by hand (DL_info.csv rows, splits.json, ground_truth/complete.pkl; no image is
needed before the checks), so every test takes well under a second or two."""

from __future__ import annotations

import json
import pickle
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from lesion_harvester.errors import DataError
from lesion_harvester.evaluation.api import evaluate
from lesion_harvester.io.annotations import write_slice_boxes, write_tracklets
from lesion_harvester.io.deeplesion import DL_INFO_COLUMNS
from lesion_harvester.lpg.sources import build_sources
from lesion_harvester.structures import SliceBox, Tracklet
from tests.hostile.common import cli_error
from tests.hostile.test_checkpoints import write_checkpoint

SIZE = 64  # px, every slice of the hand-made datasets
# (patient, first PNG slice, last PNG slice, DL_info split): sub-volumes 000001_01_01_039-061 (23 slices), ...
VOLUMES = [(1, 39, 61, 1), (2, 10, 22, 1), (3, 5, 15, 1), (4, 30, 40, 1), (5, 1, 12, 3)]
KEYS = [f"{p:06d}_01_01_{a:03d}-{b:03d}" for p, a, b, _ in VOLUMES]
SPLITS = {"fully_annotated": KEYS[:1], "harvest": KEYS[1:3], "harvest_test": KEYS[2:3], "validation": KEYS[3:4],
          "detection_test": KEYS[4:]}
BOX = (15.0, 20.0, 45.0, 40.0)  # the lesion of every volume, on its key slice


def _row(patient: int, first: int, last: int, split: int) -> str:
    key_slice = (first + last) // 2
    return (f'{patient:06d}_01_01_{key_slice:03d}.png,{patient},1,1,{key_slice},"20, 30, 40, 30, 30, 25, 30, 35",'
            f'"{", ".join(f"{v:g}" for v in BOX)}","20, 10","0.5, 0.5, 0.5",-1,0,"{first}, {last}","1.0, 1.0, 2.5",'
            f'"{SIZE}, {SIZE}","-175, 275",F,50,{split}')


def _key_z(key: str) -> int:
    first, last = (int(v) for v in key.rsplit("_", 1)[1].split("-"))
    return (first + last) // 2 - first


def make_dataset(root: Path, volumes=VOLUMES, splits: dict | None = SPLITS, complete: dict | None = None) -> Path:
    """A DeepLesion-layout folder without images: DL_info.csv, splits.json and ground_truth/complete.pkl
    (the synthetic layout; ``splits`` None: the real layout, DL_info.csv alone)."""
    (root / "Images_png").mkdir(parents=True)
    rows = [_row(*v) for v in volumes]
    (root / "DL_info.csv").write_text("\n".join([",".join(DL_INFO_COLUMNS), *rows]) + "\n")
    if splits is not None:
        (root / "splits.json").write_text(json.dumps(splits))
        keys = [f"{p:06d}_01_01_{a:03d}-{b:03d}" for p, a, b, _ in volumes]
        labels = complete if complete is not None else {k: [SliceBox(_key_z(k), BOX)] for k in keys}
        write_slice_boxes(root / "ground_truth" / "complete.pkl", labels)
    return root


def _pickle(path: Path, obj) -> Path:
    path.write_bytes(pickle.dumps(obj, protocol=2))
    return path


# --- malformed pickles ------------------------------------------------------------------------------

K = KEYS[0]
PAIR = (3, [1.0, 2.0, 30.0, 40.0, 0.5])


@pytest.mark.parametrize("side, payload, expected", [
    ("detections", {K: [[]]}, f"{K} tracklet 0: expected a non-empty list of (z, [x1, y1, x2, y2, score]) pairs, "
                              "got list []"),  # an empty tracklet (was an IndexError)
    ("detections", {K: [[PAIR], []]}, f"{K} tracklet 1: expected a non-empty list"),
    ("detections", {K: [[("3", PAIR[1])]]}, f"{K} tracklet 0: slice index '3' is not a number (str)"),
    ("detections", {K: [[(3, PAIR[1], 0.5)]]}, f"{K} tracklet 0: expected a non-empty list of (z, [x1, y1, x2, y2, "
                                               "score]) pairs, got the item tuple (3,"),
    ("detections", {K: [[(3, [1.0, 2.0, 30.0, 40.0])]]},
     f"{K} tracklet 0: [x1, y1, x2, y2, score]: expected 5 numbers"),
    ("detections", {K: [1, 2, 3, 4, 5, 6]}, f"{K}: expected a list of 3D boxes [[x1, y1, x2, y2, z0, z1], ...] or of "
                                            "tracklets [[(z, [x1, y1, x2, y2, score]), ...], ...], got a flat list"),
    ("detections", {K: None}, f"{K}: expected {{z: [boxes]}}, a list of 3D boxes or a list of tracklets, got NoneType"),
    ("detections", {K: [[1, 2, 30, 40, float("nan"), 6]]}, f"{K}: 3D box [x1, y1, x2, y2, z0, z1]: expected finite"),
    ("gt", {K: {"3": [[1.0, 2.0, 30.0, 40.0, 3, 3]]}}, f"{K}: slice index '3' is not a number (str); slice indices "
                                                       "are 0-based integers"),  # string slice keys
    ("gt", {K: {"a": [[1.0, 2.0, 30.0, 40.0, 3, 3]]}}, f"{K}: slice index 'a' is not a number"),  # was ValueError
    ("gt", {K: {3: None}}, f"{K} slice 3: expected a list of boxes [[x1, y1, x2, y2, z, z], ...], got NoneType"),
    ("gt3d", {K: [1, 2, 3, 4, 5, 6]}, f"{K}: expected a list of 3D boxes [[x1, y1, x2, y2, z0, z1], ...], got a "
                                      "flat list of 6 numbers"),  # a flat 3D-box list (was a TypeError)
    ("gt3d", {K: [[1, 2, 30, 40, "a", 6]]}, f"{K}: 3D box [x1, y1, x2, y2, z0, z1]: expected 6 numbers, got list"),
])
def test_a_malformed_annotation_pickle_is_one_line_naming_the_file_and_the_volume(tmp_path, capsys, side, payload,
                                                                                     expected):
    bad = _pickle(tmp_path / "bad.pkl", payload)
    good_gt = _pickle(tmp_path / "gt.pkl", {K: {3: [[1.0, 2.0, 30.0, 40.0, 3.0, 3.0]]}})
    good_dets = _pickle(tmp_path / "dets.pkl", {K: [[PAIR]]})
    argv = {"detections": ["--gt", good_gt, "--detections", bad],
            "gt": ["--gt", bad, "--detections", good_dets],
            "gt3d": ["--gt", bad, "--detections", good_dets, "--metric", "iou3d"]}[side]
    line = cli_error(capsys, ["evaluate", *argv, "--json", tmp_path / "r.json"])
    assert f"error: {bad}: {expected}" in line, line
    assert not (tmp_path / "r.json").exists()


# --- evaluation: detections outside their volume ------------------------------------------------------


@pytest.mark.parametrize("pair, expected", [
    ((500, [1.0, 2.0, 30.0, 40.0, 0.9]), "slice 500 is outside the volume's 23 slices (0-22)"),
    ((3, [1e9, 2.0, 1e9 + 3, 40.0, 0.9]), f"box [1e+09, 2, 1e+09, 40] on slice 3 lies outside the volume's {SIZE} x "
                                          f"{SIZE} px slices"),
    ((-1, [1.0, 2.0, 30.0, 40.0, 0.9]), "non-negative integer"),
])
def test_a_detection_outside_its_volume_is_an_error_not_a_miss(tmp_path, capsys, pair, expected):
    data = make_dataset(tmp_path / "data")
    dets = _pickle(tmp_path / "dets.pkl", {K: [[(_key_z(K), list(BOX) + [0.8])], [pair]]})
    line = cli_error(capsys, ["evaluate", "--gt", data / "ground_truth" / "complete.pkl", "--detections", dets])
    assert f"error: {dets}: " in line and expected in line, line
    if "slice 500" in expected:
        assert f"{K}: detection 1: " in line and f"(sizes from {(data / 'DL_info.csv').resolve()})" in line


def test_detections_that_overlap_their_slice_count_and_unknown_sizes_are_not_checked(tmp_path, capsys):
    data = make_dataset(tmp_path / "data")
    # reaching past the image's edge (an unclipped detector's box) is a detection, and a hit here
    reaching = {K: [[(_key_z(K), [15.0, 20.0, 45.0 + SIZE, 40.0, 0.9])], [(_key_z(K), list(BOX) + [0.8])]]}
    dets = _pickle(tmp_path / "dets.pkl", reaching)
    assert evaluate(data / "ground_truth" / "complete.pkl", dets).n_detections == 2
    # a ground truth with no DL_info.csv beside it (the released Revised-Test1071.pkl): sizes unknown
    elsewhere = tmp_path / "gt.pkl"
    elsewhere.write_bytes((data / "ground_truth" / "complete.pkl").read_bytes())
    far = _pickle(tmp_path / "far.pkl", {K: [[(500, [1.0, 2.0, 30.0, 40.0, 0.9])]]})
    assert evaluate(elsewhere, far).n_detections == 1
    # in memory, with the sizes given
    with pytest.raises(DataError, match=rf"^the detections: {K}: detection 0: slice 500 is outside"):
        evaluate({K: [SliceBox(3, BOX)]}, {K: [Tracklet.single_slice(500, BOX, 0.9)]}, volume_sizes={K: (23, (64, 64))})


# --- training data: every box is checked against its volume ----------------------------------------------

H = KEYS[1]  # a harvest volume: 13 slices of 64 x 64 px


@pytest.mark.parametrize("option, tracklet, expected", [
    # 1e6 px made training try to allocate 187 GiB after the first epoch
    ("--extra-positives", Tracklet.single_slice(3, [10.0, 10.0, 1e6, 1e6], 0.9),
     f"{H}: positive 0: box [10, 10, 1e+06, 1e+06] on slice 3 lies outside the volume's {SIZE} x {SIZE} px slices"),
    ("--hard-negatives", Tracklet.single_slice(300, [10.0, 10.0, 20.0, 20.0], 0.9),
     f"{H}: hard negative 0: slice 300 is outside the volume's 13 slices (0-12)"),
    ("--extra-positives", Tracklet(np.array([4, 5]), np.array([[10.0, 10, 20, 20], [10.0, 10, 20, 90]]),
                                   np.array([0.9, 0.5])),
     f"{H}: positive 0: box [10, 10, 20, 90] on slice 5 lies outside"),  # any slice of a tracklet
])
def test_extra_boxes_outside_their_volume_are_refused_before_training(tmp_path, capsys, option, tracklet, expected):
    data = make_dataset(tmp_path / "data")
    extra = tmp_path / "extra.pkl"
    write_tracklets(extra, {H: [tracklet]})
    tracemalloc.start()
    try:
        with pytest.raises(DataError) as err:
            build_sources(data, **{option.strip("-").replace("-", "_"): extra})
        peak_mb = tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()
    assert str(err.value).startswith(f"{extra}: {expected}"), str(err.value)
    assert peak_mb < 200  # a box of 1e6 px once made training allocate 187 GiB
    out = tmp_path / "lpg"
    assert cli_error(capsys, ["train-lpg", data, "--out", out, "--preset", "tiny", option, extra,
                                    "--device", "cpu", "-q"]) == f"lesion-harvester train-lpg: error: {err.value}"
    assert not (out / "best.pt").exists() and not (out / "last.pt").exists()


def test_fully_annotated_labels_outside_their_volume_name_their_file(tmp_path):
    data = make_dataset(tmp_path / "data")
    labels = tmp_path / "vm.pkl"
    write_slice_boxes(labels, {K: [SliceBox(40, BOX)]})  # 000001_01_01_039-061 has 23 slices
    with pytest.raises(DataError, match=rf"^{labels}: {K}: lesion 0: slice 40 is outside the volume's 23 slices"):
        build_sources(data, fully_annotated=labels)
    # the synthetic layout's own complete labels are checked as well
    bad = make_dataset(tmp_path / "bad", complete={k: [SliceBox(_key_z(k), (15.0, 20.0, 45.0, 4000.0))] for k in KEYS})
    with pytest.raises(DataError, match=rf"^{bad / 'ground_truth' / 'complete.pkl'}: {K}: lesion 0: box"):
        build_sources(bad)


# --- splits and datasets that name no (or unknown) volumes ------------------------------------------------


def test_splits_naming_a_volume_absent_from_dl_info(tmp_path, capsys):
    # was a KeyError in dataset/roles.py
    splits = {**SPLITS, "harvest": [*SPLITS["harvest"], "999999_01_01_001-010"]}
    data = make_dataset(tmp_path / "data", splits=splits)
    line = cli_error(capsys, ["train-lpg", data, "--out", tmp_path / "lpg", "--preset", "tiny", "-q"])
    assert line == (f"lesion-harvester train-lpg: error: {data / 'splits.json'}: split 'harvest' names 1 volumes not "
                    f"in {data / 'DL_info.csv'}, e.g. 999999_01_01_001-010")


def test_complete_labels_missing_a_volume_that_needs_them(tmp_path):
    data = make_dataset(tmp_path / "data", complete={k: [SliceBox(_key_z(k), BOX)] for k in KEYS[1:]})
    with pytest.raises(DataError, match=rf"complete.pkl: no labels for 1 volumes of splits.json's 'fully_annotated', "
                                        rf"e.g. {K}"):
        build_sources(data)


def test_a_dl_info_with_only_its_header_has_no_volumes(tmp_path, capsys):
    # it gave "0 proposals of 0 volumes" and exit 0
    data = make_dataset(tmp_path / "data", volumes=[], splits=None)
    checkpoint = write_checkpoint(tmp_path / "lpg.pt")
    out = tmp_path / "dets.pkl"
    line = cli_error(capsys, ["propose", data, "--checkpoint", checkpoint, "--out", out, "--device", "cpu"])
    assert line.endswith(f"error: {data / 'DL_info.csv'}: no volumes: the file has its header but no rows (one row "
                         "per lesion, and a sub-volume is known by its rows)")
    assert not out.exists()
    assert "no volumes" in cli_error(capsys, ["inspect", data])


def test_a_split_without_volumes_is_not_a_finished_scan(tmp_path, capsys):
    data = make_dataset(tmp_path / "data", volumes=VOLUMES[:2], splits=None)  # training rows only
    out = tmp_path / "dets.pkl"
    line = cli_error(capsys, ["propose", data, "--checkpoint", write_checkpoint(tmp_path / "lpg.pt"), "--out", out,
                              "--split", "val", "--device", "cpu"])
    assert line.endswith(f"error: {data}: no volumes to scan in split 'val'")
    assert not out.exists()
