"""Scan every slice of a volume with a detector and stack the 2D proposals into 3D proposals.

One path for every :class:`~lesion_harvester.detectors.base.DetectionModel`: the volume in the
network's window, padded to the detector's multiple; each slice's context positions; the detector's
2D boxes (:meth:`~lesion_harvester.detectors.base.DetectionModel.detect_slices`; the MSCN computes
each triplet once per volume, :mod:`.model`) mapped back to the original pixels; the 2D proposals
stacked into tracklets.
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
from lesion_harvester.detectors.base import DetectionModel
from lesion_harvester.geometry.preprocess import pad_to_multiple, rewindow
from lesion_harvester.lpg.data import in_workers
from lesion_harvester.lpg.losses import clamped_sigmoid
from lesion_harvester.lpg.model import MSCN
from lesion_harvester.preprocessing import PreparedVolume, network_air
from lesion_harvester.stacking.stack import stack_proposals
from lesion_harvester.structures import Tracklet

log = logging.getLogger(__name__)


@dataclass
class SliceProposals:
    """2D proposals of one slice in original pixels: boxes (K, 4), scores (K,)."""

    boxes_xyxy_px: np.ndarray
    scores: np.ndarray


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
    """Runs a detector over prepared volumes. ``model`` must be in eval mode."""

    def __init__(self, model: DetectionModel, pre: PreprocessConfig, scan: ScanConfig, device: str = "cpu"):
        self.model, self.pre, self.scan, self.device = model, pre, scan, torch.device(device)
        self.autocast = self.device.type == "cuda" and scan.amp and model.amp
        self.amp_dtype = getattr(torch, scan.amp_dtype)
        if scan.channels_last:
            self.model = model.to(memory_format=torch.channels_last)
        if scan.compile:
            self.model = model.compile_parts()

    def _volume_tensor(self, pv: PreparedVolume) -> torch.Tensor:
        return network_volume(pv, self.pre, self.device, self.model.size_divisible)

    @torch.no_grad()
    def heatmaps(self, pv: PreparedVolume, shared: bool, targets: list[int] | None = None) -> np.ndarray:
        """(T, h, w) heatmap probabilities of the target slices (default all), for checks and benchmarks
        of the MSCN (:meth:`~lesion_harvester.lpg.model.MSCN.outputs`)."""
        targets = list(range(pv.num_slices)) if targets is None else targets
        positions = pv.context_positions(self.model.num_slices, self.pre)
        out = []
        for _, (hm, _, _) in self.model.outputs(self._volume_tensor(pv), positions, targets, self.scan, shared):
            out.append(clamped_sigmoid(hm)[:, 0].float().cpu().numpy())
        return np.concatenate(out)

    @torch.no_grad()
    def predict(self, pv: PreparedVolume, targets: list[int] | None = None) -> dict[int, SliceProposals]:
        """The detector's 2D proposals of each target slice (default all), in original pixels."""
        targets = list(range(pv.num_slices)) if targets is None else targets
        positions = pv.context_positions(self.model.num_slices, self.pre)
        result = {}
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.autocast):
            volume = self._volume_tensor(pv)
            for chunk, boxes, scores in self.model.detect_slices(volume, positions, targets, self.scan):
                for i, z in enumerate(chunk):
                    result[z] = slice_proposals(pv, boxes[i], scores[i])
        return result

    def propose(self, pv: PreparedVolume, stack: StackConfig) -> list[Tracklet]:
        """3D proposals of a whole volume."""
        per_slice = self.predict(pv)
        ordered = [(per_slice[z].boxes_xyxy_px, per_slice[z].scores) for z in range(pv.num_slices)]
        return stack_proposals(ordered, stack)


def scanner_from_checkpoint(path: str | Path, device: str, scan: ScanConfig | None = None,
                            detector: type[DetectionModel] = MSCN) -> tuple[Scanner, PreprocessConfig, StackConfig]:
    """(a Scanner of the ``detector`` of the checkpoint at ``path`` (the LPG by default), its preprocessing,
    the stacking settings stored with it)."""
    model, pre, stack = detector.load(path, device)
    return Scanner(model, pre, scan or ScanConfig(), device), pre, stack


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
