"""Greedy matching, FROC per volume, AP and recall at precision, as the authors' evaluation does.

Rules (reference-facts section 6), applied to detections in descending confidence
(a tracklet's confidence is its highest 2D score):

- no overlap >= threshold with any ground truth of its volume: one false positive (FROC and AP);
- otherwise every not-yet-hit ground truth it overlaps becomes a true positive (one detection can
  hit several), and each already-hit one it overlaps adds a false positive for AP only.

Tied confidences keep the order in which the detections were given (volume by volume, tracklet
by tracklet); with distinct scores the result equals the released script's.
Detections for volumes without ground truth (unknown keys) are left out and counted in
``n_ignored``; volumes of the ground truth without any detection still count in FP/volume.

FROC: sensitivity at 0.125 ... 16 FP per volume by linear interpolation with linear
extrapolation, as ``scipy.interpolate.interp1d(fill_value='extrapolate')`` does in the released
code. Where that formula divides by zero (two curve points at the same FP rate at the ends,
e.g. no false positive at all), we report the highest sensitivity reached with at most that many
FPs per volume instead of the released inf/NaN.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from lesion_harvester.evaluation.matching import DEFAULT_THRESHOLDS, VolumeTruth, overlaps
from lesion_harvester.structures import Tracklet

log = logging.getLogger(__name__)

FROC_FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
PRECISION_LEVELS = (0.8, 0.85, 0.9, 0.95)


def _fmt(value: float) -> str:
    """JSON key for a rate: 0.125 -> "0.125", 1.0 -> "1", 0.8 -> "0.8"."""
    return f"{value:g}"


@dataclass
class EvaluationResult:
    """Everything one evaluation run produces.

    Curve arrays have one entry per evaluated detection, in evaluation order.
    """

    metric: str
    iou_threshold: float
    ap: float
    froc: dict[str, float]
    recall_at_precision: dict[str, float]
    n_gt: int
    n_volumes: int
    n_detections: int
    n_ignored: int
    scores: np.ndarray = field(repr=False)
    recall: np.ndarray = field(repr=False)
    precision: np.ndarray = field(repr=False)
    fp_per_volume: np.ndarray = field(repr=False)
    detection_is_tp: dict[str, np.ndarray] = field(repr=False, default_factory=dict)

    def to_json(self) -> dict:
        return {
            "metric": self.metric,
            "iou_threshold": self.iou_threshold,
            "ap": float(self.ap),
            "froc": {k: float(v) for k, v in self.froc.items()},
            "recall_at_precision": {k: float(v) for k, v in self.recall_at_precision.items()},
            "n_gt": self.n_gt,
            "n_volumes": self.n_volumes,
            "n_detections": self.n_detections,
            "n_ignored": self.n_ignored,
            "final_recall": float(self.recall[-1]) if len(self.recall) else 0.0,
            "final_precision": float(self.precision[-1]) if len(self.precision) else 1.0,
        }


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC all-point AP: area under the monotone precision envelope."""
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    changed = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[changed + 1] - mrec[changed]) * mpre[changed + 1]))


def froc_sensitivities(fp_per_volume: np.ndarray, sensitivity: np.ndarray, rates=FROC_FP_RATES) -> np.ndarray:
    """Sensitivity at each FP/volume rate (see the module docstring for the rule)."""
    x = np.asarray(fp_per_volume, dtype=np.float64)
    y = np.asarray(sensitivity, dtype=np.float64)
    rates = np.asarray(rates, dtype=np.float64)
    if len(x) == 0:
        return np.zeros(len(rates))
    # step fallback: best sensitivity with at most `rate` FPs per volume
    fallback = np.array([y[x <= r].max() if np.any(x <= r) else 0.0 for r in rates])
    if len(x) < 2:
        return fallback
    idx = np.clip(np.searchsorted(x, rates, side="left"), 1, len(x) - 1)
    lo, hi = idx - 1, idx
    dx = x[hi] - x[lo]
    with np.errstate(divide="ignore", invalid="ignore"):
        value = (y[hi] - y[lo]) / dx * (rates - x[lo]) + y[lo]
    return np.where((dx > 0) & np.isfinite(value), value, fallback)


def recall_at_precision(recall: np.ndarray, precision: np.ndarray, levels=PRECISION_LEVELS) -> dict[str, float]:
    """Highest recall among operating points whose precision is >= each level (0 if none)."""
    out = {}
    for level in levels:
        ok = precision >= level - 1e-12
        out[_fmt(level)] = float(recall[ok].max()) if ok.any() else 0.0
    return out


def evaluate_detections(
    truth: dict[str, VolumeTruth],
    detections: dict[str, list[Tracklet]],
    metric: str = "p3d",
    iou_threshold: float | None = None,
) -> EvaluationResult:
    """Evaluate tracklets against per-volume ground truth.

    Args:
        truth: ground truth per volume key; every key counts as a volume (FPs per volume).
        detections: tracklets per volume key.
        metric: ``p3d``, ``p3d-box`` or ``iou3d`` (see :mod:`lesion_harvester.evaluation.matching`).
        iou_threshold: defaults to 0.5 (P3D) or 0.33 (3D IoU).
    """
    threshold = DEFAULT_THRESHOLDS[metric] if iou_threshold is None else float(iou_threshold)
    keys, confidences, overlap_rows, index_in_volume = [], [], [], []
    n_ignored = 0
    for key, tracklets in detections.items():
        if key not in truth:
            n_ignored += len(tracklets)
            continue
        for i, tracklet in enumerate(tracklets):
            keys.append(key)
            confidences.append(tracklet.score)
            overlap_rows.append(overlaps(tracklet, truth[key], metric))
            index_in_volume.append(i)
    if n_ignored:
        log.warning("%d detections in volumes without ground truth were left out", n_ignored)
    n_gt = sum(len(t) for t in truth.values())
    n_volumes = len(truth)
    scores = np.asarray(confidences, dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    hit = {key: np.zeros(len(t), dtype=bool) for key, t in truth.items()}
    is_tp = {key: np.zeros(len(detections[key]), dtype=bool) for key in detections if key in truth}
    tp = fp_froc = fp_ap = 0
    tps, fps_froc, fps_ap = np.zeros(len(order)), np.zeros(len(order)), np.zeros(len(order))
    for rank, i in enumerate(order):
        row = overlap_rows[i]
        matched = np.flatnonzero(row >= threshold) if len(row) else np.zeros(0, dtype=np.int64)
        if len(matched) == 0:
            fp_froc += 1
            fp_ap += 1
        else:
            is_tp[keys[i]][index_in_volume[i]] = True
            volume_hits = hit[keys[i]]
            new = matched[~volume_hits[matched]]
            tp += len(new)
            fp_ap += len(matched) - len(new)
            volume_hits[new] = True
        tps[rank], fps_froc[rank], fps_ap[rank] = tp, fp_froc, fp_ap
    recall = tps / max(n_gt, 1)
    precision = tps / np.maximum(tps + fps_ap, np.finfo(np.float64).eps)
    fp_per_volume = fps_froc / max(n_volumes, 1)
    froc = froc_sensitivities(fp_per_volume, recall)
    return EvaluationResult(
        metric=metric,
        iou_threshold=threshold,
        ap=voc_ap(recall, precision) if len(order) else 0.0,
        froc={_fmt(r): float(v) for r, v in zip(FROC_FP_RATES, froc)},
        recall_at_precision=recall_at_precision(recall, precision),
        n_gt=n_gt,
        n_volumes=n_volumes,
        n_detections=len(order),
        n_ignored=n_ignored,
        scores=scores[order],
        recall=recall,
        precision=precision,
        fp_per_volume=fp_per_volume,
        detection_is_tp=is_tp,
    )
