"""Mining (paper Sec. III-D): the fused score, the 95%-precision threshold, positives and hard negatives.

- lesion score ``s = s_g * s_c`` (LPG objectness times LPC probability);
- the threshold is the lowest score at which every operating point at or above it keeps a
  precision >= 95% on the fully annotated volumes V_M;
- harvested positives P_H^+: proposals of V_H (not matching a mark) with s >= threshold;
- hard negatives P_H^-: the rest with s_g >= 0.5, plus up to five of the rest per volume with the
  highest s_g.
"""

from __future__ import annotations

import numpy as np


def fused_score(objectness: np.ndarray, probability: np.ndarray) -> np.ndarray:
    return np.asarray(objectness, dtype=np.float64) * np.asarray(probability, dtype=np.float64)


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
