"""How precise are the new proposals above a score? Two sources of evidence, and their pool.

- ``vm`` (the paper's rule): V_M's complete labels tell each new V_M proposal's truth; the threshold
  is the lowest score at which every operating point above keeps the precision. V_M holds a few
  dozen lesions, so this rests on little (:func:`precision_lower_bound`).
- ``marks`` (positive-unlabeled): in calibration volumes of V_H, whose RECIST marks no model trained
  on, a lesion of a given size is proposed above s as often whether it is marked or not. So the
  proposals above s on *unmarked* lesions number about ``sum_b K_b(s) (1 - c_b) / c_b``, where
  ``K_b(s)`` counts the proposals above s that cover a mark of size bin b, and ``c_b`` is the share
  of lesions of that size that carry a mark, measured on V_M (complete labels against its marks).
  Divided by the number of new proposals above s (those covering no mark, pieces of marked lesions
  left out), that is their precision. Why held-out marks: a model that trained on a mark proposes
  that very lesion more often than an unmarked one of its size (measured on the demo:
  benchmarks/RESULTS.md, 'Harvest quality (issue 15, blocked)'), which would overstate the
  unmarked lesions found.
- ``combined``: both counts pooled, (V_M lesions + estimated V_H lesions) over (V_M + V_H new
  proposals) above s.
- ``fp_rate``: V_H's own count of new proposals above s, N_H(s), less the false positives that V_M's
  rate per volume predicts for V_H's volumes: 1 - r(s) |V_H| / N_H(s). The paper's rule reads the
  precision off the few V_M proposals above s (six lesions and no false positive read as 1.000 on
  the bench, where the harvested lesions were 0.66 real); this one needs only V_M's false positives,
  thousands of them, and where they thin out above s their tail is fitted (:func:`false_positive_rate`),
  so the threshold's own handful does not decide. It cannot see the harvest's own errors coming back:
  in later rounds round 1's false harvests, trained as positives since, are 40-56% of V_H's false
  positives above the threshold on the bench, and V_M, whose labels are complete, has none of them.

- ``vm_and_fp_rate``: both ``vm`` and ``fp_rate`` must reach the precision: the higher of their two
  thresholds, and at any score the lower of their two estimates. Why: V_M's count sets the threshold
  just above V_M's highest false positive, an extreme of ten volumes that V_H's hundreds exceed (on the
  bench it fell where V_H's new proposals were 0.57-0.72 real: benchmarks/RESULTS.md, issue 34), while
  ``fp_rate`` alone, reading V_M's false positives as a rate per volume, can go below a threshold that
  V_M's own few lesions refuse.

For ``marks``, ``combined`` and ``fp_rate`` the threshold is the lowest s at which the estimated precision of
everything above s (what would be harvested) reaches the target. Every rule's estimate comes with a
95% interval (:func:`precision_interval`): the wider of a bootstrap over volumes (of the calibration
volumes and, for ``c_b``, of V_M) and the exact binomial interval of the counts, because a bootstrap
of three lesions and no false positive only ever draws 100%.

Sizes are the long side of a box in mm less DeepLesion's 5 px padding on each side: a mark's box and
a complete label's box are drawn the same way (the RECIST extent plus 5 px).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import beta

from lesion_harvester.evaluation.matching import VolumeTruth, overlaps
from lesion_harvester.geometry.boxes import iou_voc
from lesion_harvester.harvest.ledger import ProposalRow
from lesion_harvester.harvest.verify import duplicates_of
from lesion_harvester.io.deeplesion import BOX_PADDING_PX
from lesion_harvester.structures import RecistMark, SliceBox

SIZE_EDGES_MM = (10.0, 20.0, 40.0)  # size bins: < 10, 10-20, 20-40, >= 40 mm
RULES = ("vm", "marks", "combined", "fp_rate", "vm_and_fp_rate")
BOOTSTRAP = 200
TAIL_COUNT = 20  # V_M's highest false positives, to whose scores the tail is fitted (rule "fp_rate")
TAIL_MIN = 10  # fewer false positives than this in all: no fit, the empirical rate only


def size_bin(long_side_mm: np.ndarray | float) -> np.ndarray:
    """Size bin index of each long side in mm (0 .. len(SIZE_EDGES_MM))."""
    return np.searchsorted(np.asarray(SIZE_EDGES_MM), np.asarray(long_side_mm, dtype=np.float64), side="right")


def long_side_mm(box_xyxy_px, pixel_mm: float) -> float:
    """The lesion's long side in mm from its box: the box's long side (inclusive pixel corners, as the
    released evaluation counts) less DeepLesion's padding of 5 px on each side (at least 1 px)."""
    x1, y1, x2, y2 = box_xyxy_px
    return float(max(max(x2 - x1 + 1, y2 - y1 + 1) - 2 * BOX_PADDING_PX, 1.0) * pixel_mm)


@dataclass
class MarkRates:
    """Lesions of V_M per volume and size bin, and how many of them carry a RECIST mark.

    Attributes:
        marked, total: (V, B) int, V = V_M volumes, B = size bins.
    """

    marked: np.ndarray
    total: np.ndarray

    def rates(self, volumes: np.ndarray | None = None) -> np.ndarray:
        """(B,) share of lesions that carry a mark, per size bin, over ``volumes`` (rows; default all).

        Smoothed towards the share over all sizes (a pseudo-count of one lesion), so that a bin with
        few V_M lesions does not give a rate of 0 or 1."""
        rows = slice(None) if volumes is None else volumes
        marked, total = self.marked[rows].sum(axis=0), self.total[rows].sum(axis=0)
        overall = (marked.sum() + 0.5) / (total.sum() + 1.0)
        return (marked + overall) / (total + 1.0)


@dataclass
class MarksEvidence:
    """The proposals of the calibration volumes of V_H (pieces of marked lesions left out).

    Attributes:
        scores: (M,) fused scores.
        bins: (M,) size bin of the mark each covers; -1 for a new proposal (it covers no mark).
        volume: (M,) calibration volume index (for the bootstrap).
        rates: V_M's marked share per size bin.
    """

    scores: np.ndarray
    bins: np.ndarray
    volume: np.ndarray
    rates: MarkRates


@dataclass
class Evidence:
    """What one round's threshold can rest on.

    Attributes:
        vm_scores, vm_lesion, vm_volume: (N,) the V_M proposals a harvest would count as new (those
            covering V_M's own marks left out): fused score, whether a complete label covers it,
            V_M volume index (for the bootstrap).
        marks: the calibration volumes' proposals, if there are calibration volumes.
        vh_scores: (M,) fused scores of V_H's new proposals (the candidates, pieces of marked lesions
            left out), and vh_volumes the number of V_H volumes, for the rule ``fp_rate``.
    """

    vm_scores: np.ndarray
    vm_lesion: np.ndarray
    vm_volume: np.ndarray
    marks: MarksEvidence | None = None
    vh_scores: np.ndarray | None = None
    vh_volumes: int = 0

    @property
    def has_marks(self) -> bool:
        return self.marks is not None and len(self.marks.scores) > 0

    @property
    def has_fp_rate(self) -> bool:
        return self.vh_scores is not None and self.vh_volumes > 0 and bool((~self.vm_lesion).any())

    def supports(self, rule: str) -> bool:
        """Whether ``rule`` has the evidence it rests on ("vm" always has)."""
        return {"vm": True, "marks": self.has_marks, "combined": self.has_marks, "fp_rate": self.has_fp_rate,
                "vm_and_fp_rate": True}[rule]  # falls back to "vm" without V_H's scores


def evidence_from_rows(vm_rows: list[ProposalRow], candidate_rows: list[ProposalRow], vh_volumes: int,
                       marks: MarksEvidence | None = None) -> Evidence:
    """One round's evidence from ledger rows: ``vm_rows`` V_M's new proposals (those covering V_M's own
    marks left out; status ``fa_lesion`` or ``fa_negative``), ``candidate_rows`` V_H's new proposals,
    ``vh_volumes`` the number of V_H volumes, ``marks`` the calibration volumes' proposals if any."""
    index = {key: i for i, key in enumerate(sorted({row.volume for row in vm_rows}))}
    return Evidence(np.array([row.score or 0.0 for row in vm_rows], dtype=np.float64),
                    np.array([row.status == "fa_lesion" for row in vm_rows], dtype=bool),
                    np.array([index[row.volume] for row in vm_rows], dtype=np.int64), marks,
                    np.array([row.score or 0.0 for row in candidate_rows], dtype=np.float64), vh_volumes)


def _count_at_or_above(scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """(T,) how many of ``scores`` are >= each threshold."""
    return len(scores) - np.searchsorted(np.sort(scores), thresholds, side="left")


def _counts_above(thresholds: np.ndarray, ev: Evidence, vm_rows: np.ndarray, cal_rows: np.ndarray,
                  rate_rows: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(V_M lesions, V_M proposals, estimated V_H lesions, V_H new proposals) at or above each of
    ``thresholds`` (T,): four (T,) arrays."""
    vm_scores, vm_lesion = ev.vm_scores[vm_rows], ev.vm_lesion[vm_rows]
    vm_tp = _count_at_or_above(vm_scores[vm_lesion], thresholds).astype(np.float64)
    vm_n = _count_at_or_above(vm_scores, thresholds).astype(np.float64)
    vh_tp, vh_n = np.zeros(len(thresholds)), np.zeros(len(thresholds))
    if ev.has_marks:
        scores, bins = ev.marks.scores[cal_rows], ev.marks.bins[cal_rows]
        rates = ev.marks.rates.rates(rate_rows)
        for b, rate in enumerate(rates):  # each proposal on a mark of bin b stands for (1 - c_b) / c_b unmarked
            vh_tp += _count_at_or_above(scores[bins == b], thresholds) * (1 - rate) / rate
        vh_n = _count_at_or_above(scores[bins < 0], thresholds).astype(np.float64)
    return vm_tp, vm_n, vh_tp, vh_n


def false_positive_rate(thresholds: np.ndarray, false_scores: np.ndarray, volumes: int) -> np.ndarray:
    """(T,) false positives per volume at or above each threshold, from ``false_scores`` (V_M's) over
    ``volumes`` volumes: counted up to the score of the ``TAIL_COUNT``-th highest false positive, above it
    an exponential tail fitted to those highest ones (their mean excess), so that a threshold above
    V_M's last false positive is still told how many V_H's volumes will bring; never fewer than
    counted (where fewer than ``TAIL_COUNT`` false positives score above 0, the fit starts near 0).

    Why a count of the highest and not a quantile of all: the fused scores s_g * s_c of most false
    positives are near 0 (the LPC rejects them), so the 95% quantile of V_M's thousands fell at 3.5e-6,
    and a tail fitted from there said 0.001 false positives per volume above 0.3 where V_M counted 1.2
    (bench seed 1, round 1 with V_M calibrating: benchmarks/log/2026-12-07.md, stop 46)."""
    thresholds = np.asarray(thresholds, dtype=np.float64)
    rate = _count_at_or_above(false_scores, thresholds) / max(volumes, 1)
    if len(false_scores) < TAIL_MIN:
        return rate
    top = np.sort(np.asarray(false_scores, dtype=np.float64))[-TAIL_COUNT:]
    u, excess = float(top[0]), top - top[0]
    if excess.mean() <= 0:
        return rate
    above = thresholds > u
    fitted = len(top) / max(volumes, 1) * np.exp(-(thresholds[above] - u) / excess.mean())
    rate[above] = np.maximum(rate[above], fitted)
    return rate


def _fp_rate_counts(thresholds: np.ndarray, ev: Evidence, vm_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(estimated lesions, new proposals) of V_H at or above each of ``thresholds`` by the rule ``fp_rate``."""
    n = _count_at_or_above(ev.vh_scores, thresholds).astype(np.float64)
    volumes = len(np.unique(ev.vm_volume))  # a bootstrap sample draws as many volumes (vm_rows may repeat one)
    false_scores = ev.vm_scores[vm_rows][~ev.vm_lesion[vm_rows]]
    expected_false = false_positive_rate(thresholds, false_scores, volumes) * ev.vh_volumes
    return np.clip(n - expected_false, 0.0, None), n


def _counts(rule: str, thresholds: np.ndarray, ev: Evidence, vm_rows: np.ndarray, cal_rows: np.ndarray,
            rate_rows: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(lesions, new proposals) at or above each of ``thresholds`` (T,) as ``rule`` counts them."""
    if rule == "fp_rate":
        return _fp_rate_counts(thresholds, ev, vm_rows)
    if rule == "vm_and_fp_rate":  # at each threshold, the counts of the rule that estimates the lower precision
        vm_tp, vm_n = _counts("vm", thresholds, ev, vm_rows, cal_rows, rate_rows)
        if not ev.has_fp_rate:
            return vm_tp, vm_n
        fp_tp, fp_n = _fp_rate_counts(thresholds, ev, vm_rows)
        with np.errstate(invalid="ignore", divide="ignore"):  # no proposal above: that rule says nothing
            lower = np.where(fp_n > 0, fp_tp / fp_n, np.inf) < np.where(vm_n > 0, vm_tp / vm_n, np.inf)
        return np.where(lower, fp_tp, vm_tp), np.where(lower, fp_n, vm_n)
    return _rule_counts(rule, *_counts_above(thresholds, ev, vm_rows, cal_rows, rate_rows))


def _rule_counts(rule: str, vm_tp, vm_n, vh_tp, vh_n):
    """(lesions, new proposals) that ``rule`` counts, from the four counts of :func:`_counts_above`."""
    if rule == "vm":
        return vm_tp, vm_n
    if rule == "marks":
        return vh_tp, vh_n
    if rule == "combined":
        return vm_tp + vh_tp, vm_n + vh_n
    raise ValueError(f"unknown threshold rule '{rule}'; expected one of {RULES}")


def _precision_curve(thresholds: np.ndarray, ev: Evidence, rule: str, vm_rows: np.ndarray | None = None,
                     cal_rows: np.ndarray | None = None, rate_rows: np.ndarray | None = None) -> np.ndarray:
    """(T,) the estimated precision of the new proposals at or above each threshold; NaN where none."""
    vm_rows = np.arange(len(ev.vm_scores)) if vm_rows is None else vm_rows
    cal_rows = np.arange(len(ev.marks.scores) if ev.has_marks else 0) if cal_rows is None else cal_rows
    tp, n = _counts(rule, np.asarray(thresholds, dtype=np.float64), ev, vm_rows, cal_rows, rate_rows)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, np.minimum(tp / n, 1.0), np.nan)


def estimated_precision(threshold: float, ev: Evidence, rule: str, vm_rows: np.ndarray | None = None,
                        cal_rows: np.ndarray | None = None, rate_rows: np.ndarray | None = None) -> float | None:
    """The precision of the new proposals at or above ``threshold`` by ``rule``; None without any.

    ``vm_rows``, ``cal_rows``, ``rate_rows``: the rows of the evidence to use (a bootstrap sample)."""
    value = float(_precision_curve(np.array([threshold]), ev, rule, vm_rows, cal_rows, rate_rows)[0])
    return None if np.isnan(value) else value


def precision_threshold(scores: np.ndarray, is_lesion: np.ndarray, precision: float = 0.95) -> float:
    """Lowest score t such that precision(s >= t') >= ``precision`` for every t' >= t.

    Returns +inf when even the highest-scored proposal fails (nothing is harvested). Ties are
    taken together: a threshold never splits proposals with equal scores.
    """
    scores = np.asarray(scores, dtype=np.float64)
    is_lesion = np.asarray(is_lesion, dtype=bool)
    if len(scores) == 0:
        return float("inf")
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], is_lesion[order]
    tp = np.cumsum(y)
    n = np.arange(1, len(s) + 1)
    last_of_tie = np.r_[s[1:] != s[:-1], True]  # operating points exist only between distinct scores
    prec = tp / n
    threshold = float("inf")
    for i in np.flatnonzero(last_of_tie):
        if prec[i] < precision:
            break
        threshold = float(s[i])
    return threshold


def precision_lower_bound(true_positives: int, false_positives: int, confidence: float = 0.95) -> float:
    """One-sided Clopper-Pearson lower bound on a precision observed as tp / (tp + fp).

    Why: the threshold is set on the few dozen lesions of V_M; nine correct proposals and no false
    one above it read as 100% precision but only bound it at >= 0.72 with 95% confidence.
    """
    if true_positives <= 0:
        return 0.0
    return float(beta.ppf(1.0 - confidence, true_positives, false_positives + 1))


def volumes_for_lower_bound(new_lesions: int, false_positives: int, volumes: int, target: float = 0.90,
                            confidence: float = 0.95, most: int = 1_000_000) -> int | None:
    """How many fully annotated volumes in all would lift :func:`precision_lower_bound` to ``target``, if
    every volume gave new lesions and false positives above the threshold at the rates these
    ``volumes`` gave (counts scaled, not rounded, so the answer moves smoothly). None where no number
    would: no lesion seen, or a precision seen at or below ``target``.

    Why: the paper annotated 744 volumes; a user sizing a radiologist's time asks how many a
    threshold needs before its 95% claim is worth something (six lesions and no false positive on
    eight volumes bound the precision only at 0.61)."""
    if new_lesions <= 0 or volumes <= 0 or new_lesions / (new_lesions + false_positives) <= target:
        return None

    def bound(n: int) -> float:
        scale = n / volumes
        return float(beta.ppf(1.0 - confidence, new_lesions * scale, false_positives * scale + 1))

    if bound(most) < target:
        return None
    low, high = 1, most  # bound(high) >= target; find the least such n
    while low < high:
        mid = (low + high) // 2
        low, high = (mid + 1, high) if bound(mid) < target else (low, mid)
    return low


def _candidate_thresholds(ev: Evidence, rule: str) -> np.ndarray:
    """The scores a threshold of ``rule`` can take (ascending): those of the proposals it counts."""
    parts = ([ev.vm_scores] if rule in ("vm", "combined", "vm_and_fp_rate") else []) + (
        [ev.marks.scores] if rule in ("marks", "combined") and ev.has_marks else []) + (
        [ev.vh_scores] if rule in ("fp_rate", "vm_and_fp_rate") and ev.has_fp_rate else [])
    return np.unique(np.concatenate(parts)) if parts else np.zeros(0)


def choose_threshold(ev: Evidence, rule: str, precision: float) -> float:
    """The threshold of ``rule`` (see the module docstring); +inf when none reaches ``precision``."""
    if rule == "vm" or not ev.supports(rule):
        return precision_threshold(ev.vm_scores, ev.vm_lesion, precision)
    if rule == "vm_and_fp_rate":
        return max(choose_threshold(ev, "vm", precision), choose_threshold(ev, "fp_rate", precision))
    thresholds = _candidate_thresholds(ev, rule)  # ascending: the lowest whose set above reaches the precision
    reached = np.flatnonzero(_precision_curve(thresholds, ev, rule) >= precision)
    return float(thresholds[reached[0]]) if len(reached) else float("inf")


def best_estimate(ev: Evidence, rule: str) -> tuple[float, float] | None:
    """(threshold, estimated precision) where ``rule`` estimates the highest precision; None without any."""
    thresholds = _candidate_thresholds(ev, rule)
    curve = _precision_curve(thresholds, ev, rule)
    if not np.isfinite(curve).any():
        return None
    i = int(np.nanargmax(curve))
    return float(thresholds[i]), float(curve[i])


def binomial_interval(successes: float, trials: float, confidence: float = 0.95) -> tuple[float, float]:
    """Two-sided Clopper-Pearson interval of a share observed as ``successes`` of ``trials`` (an
    estimated, fractional count is rounded)."""
    n = int(round(trials))
    k = min(max(int(round(successes)), 0), n)
    if n == 0:
        return 0.0, 1.0
    tail = (1.0 - confidence) / 2
    lo = float(beta.ppf(tail, k, n - k + 1)) if k > 0 else 0.0
    hi = float(beta.ppf(1.0 - tail, k + 1, n - k)) if k < n else 1.0
    return lo, hi


def precision_interval(threshold: float, ev: Evidence, rule: str, seed: int = 0, samples: int = BOOTSTRAP,
                       confidence: float = 0.95) -> tuple[float, float] | None:
    """A ``confidence`` interval of the estimated precision at ``threshold``: the wider of

    - a percentile bootstrap resampling whole volumes (calibration volumes, V_M volumes, and V_M
      volumes again for the marked shares): how much the estimate depends on which volumes were drawn;
    - the exact binomial interval of the (estimated) lesions among the new proposals counted: what
      a handful of proposals can say at all (three lesions and no false positive give [0.29, 1]).
    """
    if not np.isfinite(threshold):
        return None
    everything = np.arange(len(ev.vm_scores)), np.arange(len(ev.marks.scores) if ev.has_marks else 0)
    tp, n = (float(c[0]) for c in _counts(rule, np.array([threshold]), ev, *everything, None))
    if n == 0:
        return None
    lo, hi = binomial_interval(min(tp, n), n, confidence)
    rng = np.random.default_rng(seed)
    vm_groups = [np.flatnonzero(ev.vm_volume == v) for v in np.unique(ev.vm_volume)]
    cal_volume = ev.marks.volume if ev.has_marks else np.zeros(0, dtype=np.int64)
    cal_groups = [np.flatnonzero(cal_volume == v) for v in np.unique(cal_volume)]
    n_rate = len(ev.marks.rates.marked) if ev.has_marks else 0
    values = []
    for _ in range(samples):
        vm_rows = np.concatenate([vm_groups[i] for i in rng.integers(len(vm_groups), size=len(vm_groups))]
                                 ) if vm_groups else np.zeros(0, dtype=np.int64)
        cal_rows = np.concatenate([cal_groups[i] for i in rng.integers(len(cal_groups), size=len(cal_groups))]
                                  ) if cal_groups else np.zeros(0, dtype=np.int64)
        rate_rows = rng.integers(n_rate, size=n_rate) if n_rate else None
        p = estimated_precision(threshold, ev, rule, vm_rows, cal_rows, rate_rows)
        if p is not None:
            values.append(p)
    if values:
        tail = (1 - confidence) / 2 * 100
        lo, hi = min(lo, float(np.percentile(values, tail))), max(hi, float(np.percentile(values, 100 - tail)))
    return lo, hi


# --- the evidence, from a round's proposals ---------------------------------------------------------------
def mark_rates(fully_annotated: dict[str, list[SliceBox]], marks: dict[str, list[RecistMark]],
               pixel_mm: dict[str, float], iou: float = 0.5) -> MarkRates:
    """V_M's lesions per volume and size bin, and those among them that carry one of the volume's
    original ``marks`` (a mark on the label's slice with IoU >= ``iou``)."""
    keys = sorted(fully_annotated)
    n_bins = len(SIZE_EDGES_MM) + 1
    marked, total = np.zeros((len(keys), n_bins), dtype=np.int64), np.zeros((len(keys), n_bins), dtype=np.int64)
    for v, key in enumerate(keys):
        for label in fully_annotated[key]:
            b = int(size_bin(long_side_mm(label.box_xyxy_px, pixel_mm[key])))
            total[v, b] += 1
            on_slice = [m.box_xyxy_px for m in marks.get(key, []) if m.z_index == label.z_index]
            if on_slice and (iou_voc(np.array(label.box_xyxy_px), np.array(on_slice)) >= iou).any():
                marked[v, b] += 1
    return MarkRates(marked, total)


def marks_evidence(rows: list[ProposalRow], marks: dict[str, list[RecistMark]], pixel_mm: dict[str, float],
                   rates: MarkRates, iou: float = 0.5) -> MarksEvidence:
    """The calibration volumes' proposals (``rows``, with fused scores) as evidence: each covering a
    mark (status ``recist``) is counted in the size bin of the largest mark it covers; pieces of marked
    lesions, which a harvest neither harvests nor counts, are left out; the rest are new proposals."""
    covering = [(row.volume, row.tracklet) for row in rows if row.status == "recist"]
    others = [row for row in rows if row.status != "recist"]
    pieces = duplicates_of([(row.volume, row.tracklet) for row in others], covering)
    kept = [row for row in rows if row.status == "recist"] + [row for row, piece in zip(others, pieces) if not piece]
    volumes = {key: i for i, key in enumerate(sorted({row.volume for row in rows}))}
    bins = []
    for row in kept:
        if row.status != "recist":
            bins.append(-1)
            continue
        truth = VolumeTruth.from_slice_boxes([m.slice_box() for m in marks.get(row.volume, [])])
        covered = np.flatnonzero(overlaps(row.tracklet, truth, "p3d") >= iou)
        sizes = [long_side_mm(truth.boxes[i], pixel_mm[row.volume]) for i in covered]
        bins.append(int(size_bin(max(sizes))) if sizes else -1)
    return MarksEvidence(np.array([row.score or 0.0 for row in kept], dtype=np.float64), np.array(bins, dtype=np.int64),
                         np.array([volumes[row.volume] for row in kept], dtype=np.int64), rates)
