"""Stack per-slice 2D proposals into 3D proposals (tracklets).

1. Keep 2D proposals with score > t_G.
2. Go through the slices in order; predict every open track with its Kalman filter and match the
   slice's proposals to the predictions by Hungarian assignment on IoU; a match needs IoU > 0.8.
   Matched tracks take the proposal's box; unmatched tracks end; unmatched proposals start tracks.
3. Extend each track by one slice up and down; two tracks whose extended ranges meet are fused when
   their boxes on every connecting slice overlap with IoU >= 0.8 (a track's box on its extension
   slice is its end box). A slice between fused tracks that neither covers (a one-slice gap) gets
   the interpolated box with the lower of the two neighbouring scores. The extension itself is not
   kept.
4. A tracklet's objectness is the highest of its 2D scores; its per-slice boxes are kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from lesion_harvester.config import StackConfig
from lesion_harvester.geometry.boxes import pairwise_iou
from lesion_harvester.stacking.kalman import KalmanBoxTracker
from lesion_harvester.structures import Tracklet


@dataclass
class _Track:
    tracker: KalmanBoxTracker
    z: list[int]
    boxes: list[np.ndarray]
    scores: list[float]


def link_tracks(per_slice: list[tuple[np.ndarray, np.ndarray]], cfg: StackConfig) -> list[Tracklet]:
    """Steps 1-2: per_slice[z] = (boxes (n, 4), scores (n,)) -> contiguous tracklets."""
    open_tracks: list[_Track] = []
    done: list[_Track] = []
    for z, (boxes, scores) in enumerate(per_slice):
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        keep = scores > cfg.score_threshold
        boxes, scores = boxes[keep], scores[keep]
        matched_tracks, matched_dets = set(), set()
        if open_tracks and len(boxes):
            predicted = np.array([t.tracker.predict() for t in open_tracks])
            iou = pairwise_iou(predicted, boxes)
            rows, cols = linear_sum_assignment(-iou)
            for r, c in zip(rows, cols):
                if iou[r, c] > cfg.link_iou:
                    track = open_tracks[r]
                    track.tracker.update(boxes[c])
                    track.z.append(z)
                    track.boxes.append(boxes[c])
                    track.scores.append(float(scores[c]))
                    matched_tracks.add(r)
                    matched_dets.add(c)
        still_open = []
        for i, track in enumerate(open_tracks):
            (still_open if i in matched_tracks else done).append(track)
        for c in range(len(boxes)):
            if c not in matched_dets:
                still_open.append(_Track(KalmanBoxTracker(boxes[c]), [z], [boxes[c]], [float(scores[c])]))
        open_tracks = still_open
    done.extend(open_tracks)
    return [Tracklet(np.array(t.z), np.array(t.boxes), np.array(t.scores)) for t in done]


def _box_at(t: Tracklet, z: int) -> np.ndarray:
    """The tracklet's box on slice z, or its nearest end box (its one-slice extension)."""
    if z <= t.z_indices[0]:
        return t.boxes_xyxy_px[0]
    if z >= t.z_indices[-1]:
        return t.boxes_xyxy_px[-1]
    hit = np.flatnonzero(t.z_indices == z)
    if len(hit):
        return t.boxes_xyxy_px[hit[0]]
    below = np.flatnonzero(t.z_indices < z)[-1]
    return t.boxes_xyxy_px[below]


def _connect(a: Tracklet, b: Tracklet, min_iou: float) -> bool:
    lo = max(a.z_indices[0], b.z_indices[0]) - 1
    hi = min(a.z_indices[-1], b.z_indices[-1]) + 1
    if lo > hi:
        return False
    for z in range(int(lo), int(hi) + 1):
        if pairwise_iou(_box_at(a, z)[None], _box_at(b, z)[None])[0, 0] < min_iou:
            return False
    return True


def _merge(a: Tracklet, b: Tracklet) -> Tracklet:
    by_z: dict[int, tuple[np.ndarray, float]] = {}
    for t in (a, b):
        for z, box, s in zip(t.z_indices.tolist(), t.boxes_xyxy_px, t.scores.tolist()):
            if z not in by_z or s > by_z[z][1]:
                by_z[z] = (box, s)
    zs = sorted(by_z)
    for z0, z1 in zip(zs[:-1], zs[1:]):
        for z in range(z0 + 1, z1):  # a one-slice gap: interpolate
            w = (z - z0) / (z1 - z0)
            box = (1 - w) * by_z[z0][0] + w * by_z[z1][0]
            by_z[z] = (box, min(by_z[z0][1], by_z[z1][1]))
    zs = sorted(by_z)
    return Tracklet(np.array(zs), np.array([by_z[z][0] for z in zs]), np.array([by_z[z][1] for z in zs]))


def fuse_tracks(tracklets: list[Tracklet], min_iou: float) -> list[Tracklet]:
    """Step 3: fuse tracks that meet after a one-slice extension (connections chain: A-B and B-C fuse
    all three).

    Candidates are found in a window of start slices, and only tracks whose in-plane extents
    intersect can connect, so a volume with thousands of short tracks stays fast.
    """
    tracks = sorted(tracklets, key=lambda t: (int(t.z_indices[0]), int(t.z_indices[-1])))
    n = len(tracks)
    if n < 2:
        return tracks
    z0 = np.array([int(t.z_indices[0]) for t in tracks])
    z1 = np.array([int(t.z_indices[-1]) for t in tracks])
    extent = np.array([t.box_3d().box_xyxy_px for t in tracks])
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(n):
        hi = int(np.searchsorted(z0, z1[i] + 2, side="right"))  # tracks starting no later than 2 slices after i ends
        js = np.arange(i + 1, hi)
        if len(js) == 0:
            continue
        e = extent[js]
        touching = (e[:, 0] <= extent[i, 2]) & (e[:, 2] >= extent[i, 0]) & (e[:, 1] <= extent[i, 3]) & (
            e[:, 3] >= extent[i, 1])
        for j in js[touching]:
            if root(i) != root(int(j)) and _connect(tracks[i], tracks[int(j)], min_iou):
                parent[root(int(j))] = root(i)
    groups: dict[int, list[Tracklet]] = {}
    for i in range(n):
        groups.setdefault(root(i), []).append(tracks[i])
    fused = []
    for members in groups.values():
        merged = members[0]
        for other in members[1:]:
            merged = _merge(merged, other)
        fused.append(merged)
    return fused


def stack_proposals(per_slice: list[tuple[np.ndarray, np.ndarray]], cfg: StackConfig | None = None) -> list[Tracklet]:
    """Per-slice 2D proposals (boxes (n, 4), scores (n,)) for z = 0..Z-1 -> 3D tracklets, by objectness."""
    cfg = cfg or StackConfig()
    tracklets = fuse_tracks(link_tracks(per_slice, cfg), cfg.fuse_iou)
    return sorted(tracklets, key=lambda t: -t.score)
