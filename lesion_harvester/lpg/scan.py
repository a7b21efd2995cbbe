"""Scan every slice of a volume with the LPG and stack the 2D proposals into 3D proposals.

Shared computation: target slice z uses the triplets centred at z - 3s, z and z + 3s (s = the
context step in slices). A triplet's features before fusion (a), and its whole neck when it sits
beside the target, do not depend on the target, so each distinct triplet (identified by its three
slice positions) is computed once per volume and reused; per target only fusion (a), dense block 3
of the fused centre, the centre's top-down neck, fusion (b) and the heads remain. With
``context_mode: shared`` every triplet centre falls on a whole slice and the reuse is complete.
The result equals the per-slice ("naive") computation up to float rounding.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from lesion_harvester.config import PreprocessConfig, ScanConfig, StackConfig
from lesion_harvester.geometry.preprocess import gather_slices, pad_to_multiple, rewindow
from lesion_harvester.lpg.checkpoint import checkpoint_stack, load_checkpoint, load_model
from lesion_harvester.lpg.data import in_workers
from lesion_harvester.lpg.decode import decode
from lesion_harvester.lpg.losses import clamped_sigmoid
from lesion_harvester.lpg.model import MSCN, Triplet
from lesion_harvester.preprocessing import PreparedVolume, network_air
from lesion_harvester.stacking.stack import stack_proposals
from lesion_harvester.structures import Tracklet

log = logging.getLogger(__name__)


@dataclass
class SliceProposals:
    """2D proposals of one slice in original pixels: boxes (K, 4), scores (K,)."""

    boxes_xyxy_px: np.ndarray
    scores: np.ndarray


def _cat(triplets: list[Triplet]) -> Triplet:
    return Triplet(*(None if getattr(triplets[0], f) is None else torch.cat([getattr(t, f) for t in triplets])
                     for f in Triplet.__slots__))


def network_volume(pv: PreparedVolume, pre: PreprocessConfig, device: torch.device | str = "cpu",
                   multiple: int = 16) -> torch.Tensor:
    """(Z, H', W') network input of a whole prepared volume: the preset's window, padded with air
    (as outside the body crop) to a multiple of ``multiple`` pixels."""
    image = rewindow(torch.from_numpy(np.asarray(pv.image, dtype=np.float32)), pre.window_hu, pre.pixel_mean)
    h, w = image.shape[1:]
    padded = pad_to_multiple(image, multiple)
    if padded.shape[1:] != (h, w):
        air = network_air(pre)
        padded[:, h:, :] = air
        padded[:, :, w:] = air
    return padded.to(device)


def slice_proposals(pv: PreparedVolume, boxes_xyxy_px: np.ndarray, scores: np.ndarray) -> SliceProposals:
    """(K, 4) boxes in pixels of the prepared image -> a slice's proposals in original pixels,
    clipped to the original image."""
    height, width = pv.original_shape[1:]
    original = pv.to_original(boxes_xyxy_px)
    original[:, [0, 2]] = np.clip(original[:, [0, 2]], 0, width - 1)
    original[:, [1, 3]] = np.clip(original[:, [1, 3]], 0, height - 1)
    return SliceProposals(original, scores)


class Scanner:
    """Runs an MSCN over prepared volumes. ``model`` must be in eval mode."""

    def __init__(self, model: MSCN, pre: PreprocessConfig, scan: ScanConfig, device: str = "cpu"):
        self.model, self.pre, self.scan, self.device = model, pre, scan, torch.device(device)
        self.autocast = self.device.type == "cuda" and scan.amp
        self.amp_dtype = getattr(torch, scan.amp_dtype)
        if scan.channels_last:
            self.model = model.to(memory_format=torch.channels_last)
        if scan.compile:
            self.model = compiled_parts(model)

    def _volume_tensor(self, pv: PreparedVolume) -> torch.Tensor:
        return network_volume(pv, self.pre, self.device)

    def _outputs(self, pv: PreparedVolume, targets: list[int], shared: bool) -> Iterator:
        """Yields (target indices, (hm logits, wh, reg)) batch by batch; with ``flip_test`` the
        heatmap probabilities and sizes are averaged with those of the left-right mirrored volume,
        mirrored back (offsets stay the plain pass's, as in CenterNet)."""
        plain = self._forward_targets(pv, targets, shared)
        if not self.scan.flip_test:
            yield from plain
            return
        mirrored = self._forward_targets(pv, targets, shared, mirror=True)
        for (chunk, (hm, wh, reg)), (_, (hm_m, wh_m, _)) in zip(plain, mirrored):
            heat = (clamped_sigmoid(hm) + clamped_sigmoid(hm_m).flip(-1)) / 2
            yield chunk, (torch.logit(heat), (wh.float() + wh_m.float().flip(-1)) / 2, reg)

    def _forward_targets(self, pv: PreparedVolume, targets: list[int], shared: bool,
                         mirror: bool = False) -> Iterator:
        """Yields (target indices, (hm logits, wh, reg)) batch by batch, of the mirrored volume if asked."""
        volume = self._volume_tensor(pv)
        if mirror:  # after padding to a multiple of 16, so that output cells mirror onto output cells
            volume = volume.flip(-1)
        positions = pv.context_positions(self.model.cfg.num_slices, self.pre)
        k = self.model.num_triplets
        batch = max(1, self.scan.batch_slices)
        if not shared or k == 1:
            for start in range(0, len(targets), batch):
                chunk = targets[start:start + batch]
                x = torch.stack([gather_slices(volume, positions[z]) for z in chunk])
                yield chunk, self.model(x)
            return
        keys = {z: [tuple(np.round(positions[z, 3 * j: 3 * j + 3] * 1e4).astype(np.int64).tolist()) for j in range(k)]
                for z in targets}
        key_positions = {key: positions[z, 3 * j: 3 * j + 3] for z in targets for j, key in enumerate(keys[z])}
        last_use: dict[tuple, int] = {}
        for i, z in enumerate(targets):
            for key in keys[z]:
                last_use[key] = i
        features: dict[tuple, Triplet] = {}
        side_necks: dict[tuple, torch.Tensor] = {}
        centre = k // 2
        for start in range(0, len(targets), batch):
            chunk = targets[start:start + batch]
            needed = list(dict.fromkeys(key for z in chunk for key in keys[z]))
            missing = [key for key in needed if key not in features]
            for m in range(0, len(missing), batch):
                group = missing[m:m + batch]
                x3 = torch.stack([gather_slices(volume, key_positions[key]) for key in group])
                computed = self.model.triplet_features(x3)
                for i, key in enumerate(group):
                    features[key] = computed.index(slice(i, i + 1))
            sides = list(dict.fromkeys(keys[z][j] for z in chunk for j in range(k) if j != centre))
            sides = [key for key in sides if key not in side_necks]
            for m in range(0, len(sides), batch):
                group = sides[m:m + batch]
                necks = self.model.side_neck(_cat([features[key] for key in group]))
                for i, key in enumerate(group):
                    side_necks[key] = necks[i:i + 1]
            t2s = [torch.cat([features[keys[z][j]].t2 for z in chunk]) for j in range(k)]
            centre_triplets = _cat([features[keys[z][centre]] for z in chunk])
            side_j = [None if j == centre else torch.cat([side_necks[keys[z][j]] for z in chunk]) for j in range(k)]
            yield chunk, self.model.target_heads(t2s, centre_triplets, side_j)
            done = start + len(chunk) - 1
            for key in [key for key, last in last_use.items() if last <= done and key in features]:
                features.pop(key)
                side_necks.pop(key, None)

    @torch.no_grad()
    def heatmaps(self, pv: PreparedVolume, shared: bool, targets: list[int] | None = None) -> np.ndarray:
        """(T, h, w) heatmap probabilities of the target slices (default all), for checks and benchmarks."""
        targets = list(range(pv.num_slices)) if targets is None else targets
        out = []
        for _, (hm, _, _) in self._outputs(pv, targets, shared):
            out.append(clamped_sigmoid(hm)[:, 0].float().cpu().numpy())
        return np.concatenate(out)

    @torch.no_grad()
    def predict(self, pv: PreparedVolume, targets: list[int] | None = None) -> dict[int, SliceProposals]:
        """Top-K 2D proposals of each target slice (default all), in original pixels."""
        targets = list(range(pv.num_slices)) if targets is None else targets
        result = {}
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.autocast):
            for chunk, (hm, wh, reg) in self._outputs(pv, targets, self.scan.shared):
                boxes, scores = decode(hm, wh, reg, self.scan.top_k, self.model.stride)
                boxes, scores = boxes.float().cpu().numpy(), scores.float().cpu().numpy()
                for i, z in enumerate(chunk):
                    result[z] = slice_proposals(pv, boxes[i], scores[i])
        return result

    def propose(self, pv: PreparedVolume, stack: StackConfig) -> list[Tracklet]:
        """3D proposals of a whole volume."""
        per_slice = self.predict(pv)
        ordered = [(per_slice[z].boxes_xyxy_px, per_slice[z].scores) for z in range(pv.num_slices)]
        return stack_proposals(ordered, stack)


def compiled_parts(model: MSCN) -> MSCN:
    """``model`` with the entry points a scan calls compiled by ``torch.compile`` (dynamic shapes:
    volumes differ in slice count and size)."""
    for name in ("forward", "triplet_features", "side_neck", "target_heads"):
        setattr(model, name, torch.compile(getattr(model, name), dynamic=True))
    return model


def scanner_from_checkpoint(path: str | Path, device: str, scan: ScanConfig | None = None
                            ) -> tuple[Scanner, PreprocessConfig, StackConfig]:
    """(a Scanner of the checkpoint's LPG, its preprocessing, the stacking settings stored with it)."""
    payload = load_checkpoint(path)
    model, _, pre = load_model(path, device, payload)
    return Scanner(model, pre, scan or ScanConfig(), device), pre, checkpoint_stack(path, payload)


class _Preparing(torch.utils.data.Dataset):
    """Volume i of ``keys``, prepared in a loader worker."""

    def __init__(self, keys: list[str], prepare):
        self.keys, self.prepare = keys, prepare

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> tuple[str, PreparedVolume]:
        pv = self.prepare(self.keys[i])
        # a memory-mapped cache file goes back as a path-free array copy; the scan reads it whole anyway
        return self.keys[i], PreparedVolume(pv.key, np.ascontiguousarray(pv.image), pv.crop_yx, pv.scale,
                                            pv.spacing_zyx_mm, pv.original_shape)


def iterate_prepared(keys: list[str], prepare, workers: int = 0) -> Iterator[tuple[str, PreparedVolume]]:
    """Volumes prepared ahead of their use, in order: by one background thread (``workers`` 0; at
    most two volumes in memory at a time), or by ``workers`` processes (reading, decoding and
    resampling in parallel; at most 2 per worker in flight). Memory stays flat however many volumes."""
    if not keys:
        return
    if workers > 0:
        yield from in_workers(_Preparing(keys, prepare), workers)
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(prepare, keys[0])
        for i, key in enumerate(keys):
            pv = future.result()
            if i + 1 < len(keys):
                future = pool.submit(prepare, keys[i + 1])
            yield key, pv


def scan_volumes(scanner: Scanner, keys: list[str], prepare, stack: StackConfig, on_volume,
                 progress: bool = True, total_slices: int | None = None, workers: int = 0) -> None:
    """3D proposals of many volumes, streamed, with a progress bar in slices per second.

    ``on_volume(key, tracklets)`` receives each volume's proposals (e.g. to save them); nothing is
    held here, so memory stays flat however many volumes are scanned. ``workers``: processes
    preparing volumes (:func:`iterate_prepared`).
    """
    bar = tqdm(total=total_slices, desc="scanning", unit="slice", disable=not progress, dynamic_ncols=True)
    for key, pv in iterate_prepared(keys, prepare, workers):
        tracklets = scanner.propose(pv, stack)
        on_volume(key, tracklets)
        bar.update(pv.num_slices)
        bar.set_postfix(volume=key, proposals=len(tracklets))
    bar.close()
