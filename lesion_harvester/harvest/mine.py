"""Mining (paper Sec. III-D): the fused score, the 95%-precision threshold, positives and hard negatives.

- lesion score ``s = s_g * s_c`` (LPG objectness times LPC probability), or ``s_g * s_c**w`` with
  the exponent w chosen on V_M among configured ones (``choose_fusion_exponent``);
- the threshold is the lowest score at which every operating point at or above it keeps a
  precision >= 95% on the fully annotated volumes V_M (on the V_M proposals that a harvest would
  count as new: those covering an original RECIST mark are left out, as they are in V_H);
- ``precision_lower_bound``: how far the few V_M proposals above the threshold support that claim;
- harvested positives P_H^+: proposals of V_H (not matching a mark) with s >= threshold;
- hard negatives P_H^-: the rest with s_g >= 0.5, plus up to five of the rest per volume with the
  highest s_g.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import beta


def fused_score(objectness: np.ndarray, probability: np.ndarray, exponent: float = 1.0) -> np.ndarray:
    """s_g * s_c**exponent; exponent 1 is the paper's Eq. 2, 0 ranks by the LPG alone."""
    # x**0 is 1 for every x (0 included), so exponent 0 needs no special case
    return np.asarray(objectness, dtype=np.float64) * np.asarray(probability, dtype=np.float64) ** exponent


def average_precision(scores: np.ndarray, is_lesion: np.ndarray) -> float:
    """Non-interpolated AP of a ranking of proposals (mean precision at each positive)."""
    y = np.asarray(is_lesion, dtype=bool)[np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")]
    if not y.any():
        return 0.0
    precision = np.cumsum(y) / np.arange(1, len(y) + 1)
    return float(precision[y].mean())


def choose_fusion_exponent(objectness: np.ndarray, probability: np.ndarray, is_lesion: np.ndarray,
                           exponents: tuple[float, ...], precision: float = 0.95) -> tuple[float, list[dict]]:
    """The exponent w of ``s_g * s_c**w`` under which the ``precision`` threshold on V_M admits the
    most V_M lesions, i.e. the one that would harvest most at the required precision (ties: the
    higher AP on V_M, then the earlier listed). Returns (w, one summary per exponent).

    Why: the paper multiplies the scores assuming that the LPG and the LPC err independently. After
    a round of hard-negative fine-tuning the LPG has learnt from the LPC's own verdicts and the
    product counts them twice; a weak LPC can then drag a better LPG ranking down.
    """
    is_lesion = np.asarray(is_lesion, dtype=bool)
    table = []
    for w in exponents:
        s = fused_score(objectness, probability, w)
        t = precision_threshold(s, is_lesion, precision)
        table.append({"exponent": float(w), "threshold": t if np.isfinite(t) else None,
                      "admitted_lesions": int((is_lesion & (s >= t)).sum()), "ap": average_precision(s, is_lesion)})
    best = max(range(len(table)), key=lambda i: (table[i]["admitted_lesions"], table[i]["ap"], -i))
    return table[best]["exponent"], table


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


def mine(volumes: list[str], objectness: np.ndarray, score: np.ndarray, threshold: float,
         hard_min_objectness: float = 0.5, top_per_volume: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Split candidate proposals (one row each, ``volumes[i]`` its volume) into harvested and hard negatives.

    Returns boolean masks (harvested, hard_negative).
    """
    objectness = np.asarray(objectness, dtype=np.float64)
    score = np.asarray(score, dtype=np.float64)
    harvested = score >= threshold
    rest = ~harvested
    hard = rest & (objectness >= hard_min_objectness)
    by_volume: dict[str, list[int]] = {}
    for i in np.flatnonzero(rest):
        by_volume.setdefault(volumes[i], []).append(int(i))
    for members in by_volume.values():
        top = sorted(members, key=lambda i: (-objectness[i], i))[:top_per_volume]
        hard[top] = True
    return harvested, hard
