"""Hand-computed cases for every rule of the released evaluation, and an independent transcription."""

import math

import numpy as np
import pytest
from scipy.interpolate import interp1d

from lesion_harvester.evaluation.matching import VolumeTruth, overlaps
from lesion_harvester.evaluation.metrics import (
    evaluate_detections,
    froc_sensitivities,
    recall_at_precision,
    voc_ap,
)
from lesion_harvester.io.annotations import read_slice_boxes
from lesion_harvester.structures import Box3D, SliceBox, Tracklet
from tests.conftest import shared_path

BOX = (100.0, 100.0, 119.0, 119.0)  # a 20 x 20 px lesion


def det(z, box, score, more=()):
    zs = [z] + [m[0] for m in more]
    boxes = [box] + [m[1] for m in more]
    return Tracklet(np.array(zs), np.array(boxes, dtype=float), np.array([score] * len(zs)))


def truth(*items):
    return VolumeTruth.from_slice_boxes([SliceBox(z, b) for z, b in items])


def test_single_hit_and_miss():
    gt = {"v": truth((5, BOX))}
    r = evaluate_detections(gt, {"v": [det(5, BOX, 0.9), det(5, (300, 300, 320, 320), 0.5)]})
    assert r.n_gt == 1 and r.n_volumes == 1 and r.n_detections == 2
    assert r.recall.tolist() == [1.0, 1.0]
    assert r.precision.tolist() == [1.0, 0.5]
    assert r.fp_per_volume.tolist() == [0.0, 1.0]
    assert r.ap == pytest.approx(1.0)


def test_wrong_slice_is_a_miss_under_p3d():
    gt = {"v": truth((5, BOX))}
    r = evaluate_detections(gt, {"v": [det(6, BOX, 0.9)]})
    assert r.recall[-1] == 0.0 and r.fp_per_volume[-1] == 1.0


def test_one_detection_hits_several_lesions():
    big = (100.0, 100.0, 139.0, 139.0)
    # two GT boxes, each with IoU >= 0.5 against one detection box
    a, b = (100.0, 100.0, 139.0, 129.0), (100.0, 110.0, 139.0, 139.0)
    gt = {"v": truth((3, a), (3, b))}
    assert overlaps(det(3, big, 1.0), gt["v"], "p3d").min() >= 0.5
    r = evaluate_detections(gt, {"v": [det(3, big, 1.0)]})
    assert r.recall[-1] == 1.0 and r.precision[-1] == 1.0


def test_duplicate_counts_as_fp_for_ap_only():
    gt = {"v": truth((5, BOX))}
    r = evaluate_detections(gt, {"v": [det(5, BOX, 0.9), det(5, BOX, 0.8)]})
    assert r.recall.tolist() == [1.0, 1.0]
    assert r.precision.tolist() == [1.0, 0.5]  # the duplicate is an AP false positive
    assert r.fp_per_volume.tolist() == [0.0, 0.0]  # but not a FROC false positive


def test_ties_keep_input_order():
    gt = {"v": truth((5, BOX))}
    miss = det(5, (300, 300, 320, 320), 0.7)
    hit = det(5, BOX, 0.7)
    first = evaluate_detections(gt, {"v": [miss, hit]})
    second = evaluate_detections(gt, {"v": [hit, miss]})
    assert first.precision.tolist() == [0.0, 0.5] and first.ap == pytest.approx(0.5)
    assert second.precision.tolist() == [1.0, 0.5] and second.ap == pytest.approx(1.0)


def test_volume_without_lesions_and_unknown_volume():
    gt = {"v": truth((5, BOX)), "empty": truth()}
    r = evaluate_detections(gt, {"v": [det(5, BOX, 0.9)], "empty": [det(1, BOX, 0.8)], "unknown": [det(1, BOX, 0.99)]})
    assert r.n_volumes == 2 and r.n_ignored == 1 and r.n_detections == 2
    assert r.fp_per_volume.tolist() == [0.0, 0.5]
    assert r.recall[-1] == 1.0


def test_no_false_positive_gives_finite_froc():
    gt = {"v": truth((5, BOX), (9, BOX)), "w": truth()}
    r = evaluate_detections(gt, {"v": [det(5, BOX, 0.9), det(9, BOX, 0.8)]})
    assert all(math.isfinite(v) for v in r.froc.values())
    assert set(r.froc.values()) == {1.0}
    assert r.recall_at_precision == {"0.8": 1.0, "0.85": 1.0, "0.9": 1.0, "0.95": 1.0}


def test_no_detection_at_all():
    r = evaluate_detections({"v": truth((5, BOX))}, {})
    assert r.ap == 0.0 and set(r.froc.values()) == {0.0} and r.n_detections == 0


def test_froc_interpolates_like_the_released_code():
    fp = np.array([0.0, 0.0, 0.5, 1.0, 1.0, 2.0])
    sens = np.array([0.1, 0.2, 0.2, 0.3, 0.4, 0.4])
    ours = froc_sensitivities(fp, sens)
    theirs = interp1d(fp, sens, fill_value="extrapolate")(np.array([0.125, 0.25, 0.5, 1, 2, 4, 8, 16]))
    finite = np.isfinite(theirs)
    assert np.allclose(ours[finite], theirs[finite])
    # 0.125 between (0, 0.2) and (0.5, 0.2): 0.2; at 1: the first point reaching 1 FP/volume (0.3)
    assert ours[0] == pytest.approx(0.2) and ours[3] == pytest.approx(0.3)
    # past the last point the released code extrapolates the last pair, (1, 0.4) -> (2, 0.4): flat
    assert ours[-1] == pytest.approx(0.4)


def test_froc_fallback_where_released_divides_by_zero():
    fp = np.array([0.0, 0.5, 1.0, 1.0])  # last pair shares x: interp1d extrapolates to inf
    sens = np.array([0.1, 0.2, 0.3, 0.5])
    with np.errstate(divide="ignore", invalid="ignore"):
        theirs = interp1d(fp, sens, fill_value="extrapolate")(np.array([2.0]))
    assert not np.isfinite(theirs).all()
    assert froc_sensitivities(fp, sens, rates=(2.0,))[0] == pytest.approx(0.5)


def test_voc_ap_and_recall_at_precision_by_hand():
    recall = np.array([0.25, 0.5, 0.5, 0.75])
    precision = np.array([1.0, 1.0, 2 / 3, 0.75])
    # envelope: 1.0 up to recall 0.5, then 0.75 to 0.75
    assert voc_ap(recall, precision) == pytest.approx(0.5 * 1.0 + 0.25 * 0.75)
    assert recall_at_precision(recall, precision) == {"0.8": 0.5, "0.85": 0.5, "0.9": 0.5, "0.95": 0.5}
    assert recall_at_precision(recall, precision, levels=(0.7,)) == {"0.7": 0.75}


def test_p3d_box_and_iou3d_rules():
    gt = truth((5, BOX))
    # a tracklet spanning slices 4 and 6 but with no box on 5
    skip = Tracklet(np.array([4, 6]), np.array([BOX, BOX]), np.array([0.9, 0.9]))
    assert overlaps(skip, gt, "p3d")[0] == 0.0
    assert overlaps(skip, gt, "p3d-box")[0] == pytest.approx(1.0)
    g3 = VolumeTruth.from_boxes_3d([Box3D(BOX, (4.0, 6.0))])
    assert overlaps(skip, g3, "iou3d")[0] == pytest.approx(1.0)
    half = Tracklet(np.array([4]), np.array([BOX]), np.array([0.9]))
    assert overlaps(half, g3, "iou3d")[0] == pytest.approx(1 / 3)
    r = evaluate_detections({"v": g3}, {"v": [half]}, metric="iou3d")
    assert r.iou_threshold == 0.33 and r.recall[-1] == 1.0


def _released_algorithm(gt_slices, detections):
    """An independent, loop-by-loop transcription of the authors' evaluation.py (as described in
    ../shared/notes/reference-facts.md section 6), used only to check the vectorised code."""
    recs = {k: [(b.z_index, np.array(b.box_xyxy_px)) for b in v] for k, v in gt_slices.items()}
    entries = []
    for key, tracklets in detections.items():
        for t in tracklets:
            entries.append((key, float(t.scores.max()), list(zip(t.z_indices.tolist(), t.boxes_xyxy_px))))

    def iou(a, b):
        iw = max(min(a[2], b[2]) - max(a[0], b[0]) + 1, 0)
        ih = max(min(a[3], b[3]) - max(a[1], b[1]) + 1, 0)
        inter = iw * ih
        union = (a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1) - inter
        return inter / max(union, 1e-6)

    def p3d(rec, pairs):
        zs = [z for z, _ in pairs]
        return iou(rec[1], pairs[zs.index(rec[0])][1]) if rec[0] in zs else 0.0

    order = sorted(range(len(entries)), key=lambda i: -entries[i][1])
    hits = {k: [False] * len(v) for k, v in recs.items()}
    tp = fp_froc = fp_ap = 0
    tps, fps, fpa = [], [], []
    for i in order:
        key, _, pairs = entries[i]
        ov = [p3d(rec, pairs) for rec in recs[key]]
        if not ov or max(ov) < 0.5:
            fp_froc += 1
            fp_ap += 1
        else:
            for j, o in enumerate(ov):
                if o >= 0.5:
                    if not hits[key][j]:
                        hits[key][j] = True
                        tp += 1
                    else:
                        fp_ap += 1
        tps.append(tp)
        fps.append(fp_froc)
        fpa.append(fp_ap)
    npos = sum(len(v) for v in recs.values())
    rec = np.array(tps) / npos
    prec = np.array(tps) / np.maximum(np.array(tps) + np.array(fpa), np.finfo(np.float64).eps)
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(len(mpre) - 1, 0, -1):
        mpre[i - 1] = max(mpre[i - 1], mpre[i])
    idx = np.where(mrec[1:] != mrec[:-1])[0]
    ap = float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]))
    with np.errstate(divide="ignore", invalid="ignore"):
        froc = interp1d(np.array(fps) / len(recs), rec, fill_value="extrapolate")([0.125, 0.25, 0.5, 1, 2, 4, 8, 16])
    return ap, froc


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_released_algorithm_on_released_annotations(seed):
    gt_slices = read_slice_boxes(shared_path("deeplesion_annotation", "Revised-Train100.pkl"))
    rng = np.random.default_rng(seed)
    used = set()

    def score():
        s = float(rng.uniform())
        while s in used:
            s = float(rng.uniform())
        used.add(s)
        return s

    detections = {}
    for key, boxes in gt_slices.items():
        tracklets = []
        for b in boxes:
            if rng.random() < 0.7:
                n = int(rng.integers(1, 5))
                z0 = max(0, b.z_index - int(rng.integers(0, n)))
                jitter = np.clip(rng.normal(0, rng.choice([1.0, 5.0, 12.0]), (n, 4)), -15, 15)
                bx = np.array(b.box_xyxy_px) + jitter
                bx[:, 2:] = np.maximum(bx[:, 2:], bx[:, :2] + 1)
                tracklets.append(Tracklet(np.arange(z0, z0 + n), bx, np.array([score() for _ in range(n)])))
        for _ in range(int(rng.integers(0, 6))):
            x, y = rng.uniform(0, 400, 2)
            tracklets.append(
                Tracklet(np.array([int(rng.integers(0, 20))]), np.array([[x, y, x + 30, y + 30]]), np.array([score()]))
            )
        detections[key] = tracklets
    ap_ref, froc_ref = _released_algorithm(gt_slices, detections)
    truth_arrays = {k: VolumeTruth.from_slice_boxes(v) for k, v in gt_slices.items()}
    result = evaluate_detections(truth_arrays, detections)
    assert result.ap == pytest.approx(ap_ref, abs=1e-9)
    ours = np.array(list(result.froc.values()))
    finite = np.isfinite(froc_ref)
    assert finite.sum() >= 5
    assert np.allclose(ours[finite], froc_ref[finite], atol=1e-9)
    assert np.all(np.isfinite(ours))
