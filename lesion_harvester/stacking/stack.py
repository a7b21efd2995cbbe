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

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from lesion_harvester.config import StackConfig
from lesion_harvester.geometry.boxes import aligned_iou, pairwise_iou
from lesion_harvester.stacking.kalman import KalmanBank
from lesion_harvester.structures import Tracklet


def link_tracks(per_slice: list[tuple[np.ndarray, np.ndarray]], cfg: StackConfig) -> list[Tracklet]:
    """Steps 1-2: per_slice[z] = (boxes (n, 4), scores (n,)) -> contiguous tracklets.

    The open tracks' Kalman filters advance together (:class:`KalmanBank`); each slice records
    which track its kept proposals joined, and the tracklets are cut from those records at the end,
    in the order the tracks ended (the open ones last), so no step loops over boxes in Python.
    """
    bank = KalmanBank()
    open_ids = np.zeros(0, dtype=np.int64)  # track id of each row of the bank
    ended: list[np.ndarray] = []  # track ids in the order their tracks ended
    records: list[tuple[np.ndarray, int, np.ndarray, np.ndarray]] = []  # (track ids, z, boxes, scores)
    next_id = 0
    for z, (boxes, scores) in enumerate(per_slice):
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        keep = scores > cfg.score_threshold
        boxes, scores = boxes[keep], scores[keep]
        matched = np.zeros(len(open_ids), dtype=bool)
        track_of = np.full(len(boxes), -1, dtype=np.int64)
        if len(open_ids) and len(boxes):
            iou = pairwise_iou(bank.predict(), boxes)
            rows, cols = linear_sum_assignment(-iou)
            good = iou[rows, cols] > cfg.link_iou
            rows, cols = rows[good], cols[good]
            bank.update(rows, boxes[cols])
            matched[rows] = True
            track_of[cols] = open_ids[rows]
        new = track_of < 0
        track_of[new] = np.arange(next_id, next_id + int(new.sum()))
        next_id += int(new.sum())
        ended.append(open_ids[~matched])
        bank.select(matched)  # matched tracks stay open in their order, new ones follow
        bank.add(boxes[new])
        open_ids = np.concatenate([open_ids[matched], track_of[new]])
        records.append((track_of, z, boxes, scores))
    ended.append(open_ids)
    if next_id == 0:
        return []
    ids = np.concatenate([r[0] for r in records])
    zs = np.concatenate([np.full(len(r[0]), r[1], dtype=np.int64) for r in records])
    all_boxes = np.concatenate([r[2] for r in records])
    all_scores = np.concatenate([r[3] for r in records])
    order = np.argsort(ids, kind="stable")  # by track, slices ascending within each
    starts = np.searchsorted(ids[order], np.arange(next_id + 1))
    tracklets = []
    for track in np.concatenate(ended):
        part = order[starts[track]:starts[track + 1]]
        tracklets.append(Tracklet(zs[part], all_boxes[part], all_scores[part]))
    return tracklets


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


def _connected_pairs(tracks: list[Tracklet], min_iou: float) -> tuple[np.ndarray, np.ndarray]:
    """The pairs (i < j) of ``tracks`` (sorted by first slice) that meet after a one-slice extension:
    on every slice from the later start - 1 to the earlier end + 1 their boxes overlap with IoU >=
    ``min_iou`` (a track's box beyond its ends is its end box; inside a gap, the last box before it).

    Candidates are tracks starting no later than 2 slices after another ends, with intersecting
    in-plane extents; every test runs on arrays, so thousands of short tracks stay fast.
    """
    lengths = np.array([len(t.z_indices) for t in tracks])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    zs = np.concatenate([t.z_indices for t in tracks]).astype(np.int64)
    boxes = np.concatenate([t.boxes_xyxy_px for t in tracks]).astype(np.float64)
    z0, z1 = zs[offsets[:-1]], zs[offsets[1:] - 1]
    extent = np.concatenate([np.minimum.reduceat(boxes[:, :2], offsets[:-1]),
                             np.maximum.reduceat(boxes[:, 2:], offsets[:-1])], axis=1)
    n = len(tracks)
    hi = np.searchsorted(z0, z1 + 2, side="right")  # tracks starting no later than 2 slices after i ends
    count = np.maximum(hi - np.arange(n) - 1, 0)
    i = np.repeat(np.arange(n), count)
    j = i + 1 + (np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count))
    a, b = extent[i], extent[j]
    touching = (b[:, 0] <= a[:, 2]) & (b[:, 2] >= a[:, 0]) & (b[:, 1] <= a[:, 3]) & (b[:, 3] >= a[:, 1])
    i, j = i[touching], j[touching]
    lo = np.maximum(z0[i], z0[j]) - 1
    top = np.minimum(z1[i], z1[j]) + 1
    meet = lo <= top
    i, j, lo, top = i[meet], j[meet], lo[meet], top[meet]
    if not len(i):
        return i, j
    # one row per (pair, connecting slice)
    slices = top - lo + 1
    pair = np.repeat(np.arange(len(i)), slices)
    z = lo[pair] + (np.arange(slices.sum()) - np.repeat(np.cumsum(slices) - slices, slices))
    # each track's box at z: its last slice at or before z, clipped to its ends
    stride = int(zs.max()) + 4  # keys track * stride + z: sorted, and z = -1 .. max + 1 stay inside a track's range
    key = np.repeat(np.arange(n), lengths) * stride + zs

    def box_at(track: np.ndarray) -> np.ndarray:
        at = np.searchsorted(key, track * stride + z, side="right") - 1
        return boxes[np.clip(at, offsets[track], offsets[track + 1] - 1)]

    ok = aligned_iou(box_at(i[pair]), box_at(j[pair])) >= min_iou
    connected = np.logical_and.reduceat(ok, np.cumsum(slices) - slices)
    return i[connected], j[connected]


def fuse_tracks(tracklets: list[Tracklet], min_iou: float) -> list[Tracklet]:
    """Step 3: fuse tracks that meet after a one-slice extension (connections chain: A-B and B-C fuse
    all three). Groups come in the order of their first track (by first, then last slice), their
    tracks in that order too."""
    tracks = sorted(tracklets, key=lambda t: (int(t.z_indices[0]), int(t.z_indices[-1])))
    n = len(tracks)
    if n < 2:
        return tracks
    i, j = _connected_pairs(tracks, min_iou)
    graph = coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    groups: dict[int, list[Tracklet]] = {}
    for index, label in enumerate(component.tolist()):
        groups.setdefault(label, []).append(tracks[index])
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
