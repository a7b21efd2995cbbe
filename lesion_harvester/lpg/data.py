"""Detector training data: the labelled slices, and the sampler that cuts training crops from
prepared volumes (:mod:`lesion_harvester.preprocessing`) with MULAN-style jitter. The crops are the
same for every detector; each builds its own targets from them
(:meth:`~lesion_harvester.detectors.base.DetectionModel.build_targets`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lesion_harvester.config import LPGTrainConfig, PreprocessConfig
from lesion_harvester.detectors.base import Crop
from lesion_harvester.geometry.preprocess import rewindow
from lesion_harvester.preprocessing import AIR_VALUE, PreparedVolume, network_air

log = logging.getLogger(__name__)

MAX_NEGATIVE_SHARE = 0.5  # at most this share of the object crops is centred on hard negatives


@dataclass
class SliceRecord:
    """One training slice: positive and hard-negative boxes (original pixels) on slice ``z_index``."""

    key: str
    z_index: int
    positives: np.ndarray  # (N, 4)
    negatives: np.ndarray  # (M, 4)


@dataclass
class TrainingData:
    """What the LPG trains on."""

    volume_keys: list[str]  # volumes to draw background crops from
    records: list[SliceRecord]
    # per volume: (z_lo, z_hi, box) regions that hold known lesions, kept out of background crops
    exclusions: dict[str, list[tuple[int, int, np.ndarray]]] = field(default_factory=dict)
    # volumes whose every lesion is labelled (V_M): background crops there hold no unmarked lesion
    complete_keys: list[str] = field(default_factory=list)

    def excluded(self, key: str, z: int, box: np.ndarray) -> bool:
        """Whether a box on slice z overlaps a known lesion (which may continue there unlabeled)."""
        for z_lo, z_hi, other in self.exclusions.get(key, []):
            overlaps_xy = box[0] <= other[2] and box[2] >= other[0] and box[1] <= other[3] and box[3] >= other[1]
            if z_lo <= z <= z_hi and overlaps_xy:
                return True
        return False

    def slice_boxes(self) -> dict[tuple[str, int], SliceRecord]:
        """Records merged per (volume, slice)."""
        merged: dict[tuple[str, int], SliceRecord] = {}
        for r in self.records:
            k = (r.key, r.z_index)
            if k in merged:
                m = merged[k]
                merged[k] = SliceRecord(r.key, r.z_index, np.concatenate([m.positives, r.positives]),
                                        np.concatenate([m.negatives, r.negatives]))
            else:
                merged[k] = r
        return merged


HardBackground = list[tuple[str, int, np.ndarray]]  # (volume key, z_index, box_xyxy_px) of mined false positives
TargetBuilder = Callable[[list[Crop]], Any]  # a batch's crops -> the detector's targets


class CropSampler:
    """Random training crops: around annotated objects, or background, with MULAN-style jitter.

    ``hard_background``: false positives mined on fully annotated volumes (their labels are
    complete, so these are true negatives), used as centres of hard background crops.
    """

    def __init__(self, data: TrainingData, prepared: dict[str, PreparedVolume], num_slices: int,
                 pre: PreprocessConfig, crop: LPGTrainConfig, rng: np.random.Generator | None = None,
                 hard_background: HardBackground | None = None):
        self.slices = data.slice_boxes()
        self.slice_list = list(self.slices.values())
        # slices with a lesion vs slices with hard negatives only: the HNSL fine-tuning gives far more
        # negatives than positives, and crops must not be drawn mostly around negatives
        self.positive_slices = [r for r in self.slice_list if len(r.positives)]
        self.negative_slices = [r for r in self.slice_list if not len(r.positives)]
        self.hard_background = hard_background or []
        # in partially labelled volumes a random crop may hold an unmarked lesion, which the loss
        # would then teach as background
        clean = crop.background_volumes == "fully_annotated" and data.complete_keys
        self.volume_keys = data.complete_keys if clean else data.volume_keys
        self.exclusions = data.exclusions
        self.complete_keys = set(data.complete_keys)
        self.prepared = prepared
        self.num_slices = num_slices
        self.pre = pre
        self.crop = crop
        self.rng = rng if rng is not None else np.random.default_rng(0)  # crops() sets one per sample
        self.positions = {k: v.context_positions(num_slices, pre) for k, v in prepared.items()}
        self.air = network_air(pre)

    def _hard_background(self):
        key, z, box = self.hard_background[int(self.rng.integers(len(self.hard_background)))]
        pv = self.prepared[key]
        b = pv.to_prepared(box)[0]
        scale = self.rng.uniform(*self.crop.scale_jitter)
        src = int(round(self.crop.crop_px / scale))
        x0 = int(round((b[0] + b[2]) / 2 - src * self.rng.uniform(0.2, 0.8)))
        y0 = int(round((b[1] + b[3]) / 2 - src * self.rng.uniform(0.2, 0.8)))
        return pv, z, y0, x0, src, scale, self.slices.get((key, z))

    def _background(self):
        if self.hard_background and self.crop.crop_px and self.rng.random() < self.crop.mined_fraction:
            return self._hard_background()
        for _ in range(20):
            key = self.volume_keys[int(self.rng.integers(len(self.volume_keys)))]
            pv = self.prepared[key]
            z = int(self.rng.integers(pv.num_slices))
            scale = self.rng.uniform(*self.crop.scale_jitter)
            src = int(round(self.crop.crop_px / scale))
            h, w = pv.image.shape[1:]
            y0 = int(self.rng.integers(-src // 4, max(h - 3 * src // 4, -src // 4 + 1)))
            x0 = int(self.rng.integers(-src // 4, max(w - 3 * src // 4, -src // 4 + 1)))
            window = np.array([x0, y0, x0 + src - 1, y0 + src - 1], dtype=np.float64)
            blocked = False
            for z_lo, z_hi, box in self.exclusions.get(key, []):
                if z_lo <= z <= z_hi:
                    b = pv.to_prepared(box)[0]
                    if b[0] <= window[2] and b[2] >= window[0] and b[1] <= window[3] and b[3] >= window[1]:
                        blocked = True
                        break
            if not blocked:
                record = self.slices.get((key, z))
                return pv, z, y0, x0, src, scale, record
        return None

    def _around_object(self):
        pool = self.slice_list
        if self.positive_slices and self.negative_slices:
            share = len(self.negative_slices) / len(self.slice_list)
            pool = self.negative_slices if self.rng.random() < min(share, MAX_NEGATIVE_SHARE) else self.positive_slices
        record = pool[int(self.rng.integers(len(pool)))]
        pv = self.prepared[record.key]
        objects = np.concatenate([record.positives, record.negatives]).reshape(-1, 4)
        anchor = pv.to_prepared(objects[int(self.rng.integers(len(objects)))])[0]
        scale = self.rng.uniform(*self.crop.scale_jitter)
        src = int(round(self.crop.crop_px / scale))
        cx, cy = (anchor[0] + anchor[2]) / 2, (anchor[1] + anchor[3]) / 2
        x0 = int(round(cx - src * self.rng.uniform(0.2, 0.8)))
        y0 = int(round(cy - src * self.rng.uniform(0.2, 0.8)))
        return pv, record.z_index, y0, x0, src, scale, record

    def pick(self) -> tuple[tuple, bool]:
        """Where the next crop is cut, and whether it is a background crop (else one around an object):
        ((prepared volume, z_index, y0, x0, side in prepared pixels, scale, the slice's SliceRecord
        or None), background). :meth:`sample` cuts it; ``benchmarks/crop_labels.py`` counts what it shows."""
        if not self.slice_list or self.rng.random() < self.crop.background_fraction:
            picked = self._background()
            if picked is not None:
                return picked, True
        return self._around_object(), False

    def sample(self) -> Crop:
        """One crop: input (S, C, C) float32 and its boxes in pixels of the crop."""
        (pv, z, y0, x0, src, scale, record), _ = self.pick()
        if self.crop.crop_px:
            src_h = src_w = src
            out_h = out_w = self.crop.crop_px
        else:  # whole slices (MULAN): the whole prepared slice, rescaled, padded to a multiple of 16
            y0 = x0 = 0
            src_h, src_w = pv.image.shape[1:]
            out_h = _multiple(src_h * scale, 16)
            out_w = _multiple(src_w * scale, 16)
        window = pv.window(self.positions[pv.key][z], y0, x0, src_h, src_w)
        scaled_h, scaled_w = max(1, int(round(src_h * scale))), max(1, int(round(src_w * scale)))
        if self.crop.crop_px:
            scaled_h, scaled_w = out_h, out_w
        image = F.interpolate(torch.from_numpy(window)[None], size=(scaled_h, scaled_w), mode="bilinear",
                              align_corners=False)[0]
        if (scaled_h, scaled_w) != (out_h, out_w):
            image = F.pad(image, (0, out_w - scaled_w, 0, out_h - scaled_h), value=AIR_VALUE)
        image = rewindow(image, self.pre.window_hu, self.pre.pixel_mean)
        factor = scaled_w / src_w

        def place(boxes):
            if boxes is None or len(boxes) == 0:
                return np.zeros((0, 4))
            b = pv.to_prepared(boxes)
            b[:, [0, 2]] -= x0
            b[:, [1, 3]] -= y0
            b = (b + 0.5) * factor - 0.5
            centre_x, centre_y = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
            inside = (centre_x >= 0) & (centre_x <= out_w - 1) & (centre_y >= 0) & (centre_y <= out_h - 1)
            return b[inside]

        positives = place(record.positives if record is not None else None)
        negatives = place(record.negatives if record is not None else None)
        image = self._augment(image, (positives, negatives), out_h, out_w)
        return Crop(image.numpy(), positives, negatives, pv.key in self.complete_keys)

    def _augment(self, image: torch.Tensor, boxes: tuple[np.ndarray, ...], out_h: int, out_w: int) -> torch.Tensor:
        """Flips, transposes and intensity changes; boxes (in place) follow the geometry."""
        cfg, rng = self.crop, self.rng
        if cfg.rotate90 and out_h == out_w and rng.random() < 0.5:
            image = image.transpose(-1, -2)
            for b in boxes:
                if len(b):
                    b[:] = b[:, [1, 0, 3, 2]]
        if (cfg.hflip or cfg.rotate90) and rng.random() < 0.5:
            image = image.flip(-1)
            for b in boxes:
                if len(b):
                    b[:, [0, 2]] = (out_w - 1) - b[:, [2, 0]]
        if cfg.rotate90 and rng.random() < 0.5:
            image = image.flip(-2)
            for b in boxes:
                if len(b):
                    b[:, [1, 3]] = (out_h - 1) - b[:, [3, 1]]
        hu_unit = 255.0 / (self.pre.window_hu[1] - self.pre.window_hu[0])  # network units per HU
        if cfg.intensity_jitter:
            j = cfg.intensity_jitter
            tissue = (40.0 - self.pre.window_hu[0]) * hu_unit - self.pre.pixel_mean  # soft tissue stays put
            image = (image - tissue) * rng.uniform(1 - j, 1 + j) + tissue + rng.uniform(-j, j) * 50 * hu_unit
        if cfg.noise_hu:
            sigma = rng.uniform(0, cfg.noise_hu) * hu_unit
            generator = torch.Generator().manual_seed(int(rng.integers(2**62)))  # seeded: runs stay repeatable
            image = image + torch.randn(image.shape, generator=generator) * sigma
        return image.contiguous()

    def crops(self, rngs: list[np.random.Generator]) -> list[Crop]:
        """One crop per generator, drawn in order."""
        crops = []
        for rng in rngs:
            self.rng = rng
            crops.append(self.sample())
        return crops

    def batch_of(self, rngs: list[np.random.Generator], build_targets: TargetBuilder) -> tuple[torch.Tensor, Any]:
        """One crop per generator: (images (B, S, H, W), ``build_targets`` of the crops); whole slices
        of different sizes are padded with air to the largest."""
        crops = self.crops(rngs)
        h = max(c.image.shape[1] for c in crops)
        w = max(c.image.shape[2] for c in crops)
        images = [np.pad(c.image, ((0, 0), (0, h - c.image.shape[1]), (0, w - c.image.shape[2])),
                         constant_values=self.air) for c in crops]
        return torch.from_numpy(np.stack(images)), build_targets(crops)

    def batch(self, n: int, build_targets: TargetBuilder) -> tuple[torch.Tensor, Any]:
        """:meth:`batch_of` n crops drawn one after another from the sampler's own generator."""
        return self.batch_of([self.rng] * n, build_targets)


def sample_rng(seed: int, epoch: int, batch_index: int, sample_index: int) -> np.random.Generator:
    """The generator of one training sample: its content depends on where it stands in the epoch,
    never on the process that draws it."""
    return np.random.default_rng([seed, epoch, batch_index, sample_index])


class EpochBatches(torch.utils.data.IterableDataset):
    """Exactly ``count`` batches of one epoch (images and ``build_targets`` of their crops); sample j
    of batch i is drawn with :func:`sample_rng` (seed, epoch, i, j).

    So the batches are the same in this process, in any number of ``DataLoader`` workers (worker w
    of W draws the batches i = w, w + W, ..., which the loader hands out in order), and after a
    resume at any epoch. ``samples`` = (first, stop) restricts every batch to those samples: under
    torchrun each rank draws its own share of the global batch, and the shares together are the
    one-process batch.
    """

    def __init__(self, make_sampler, build_targets: TargetBuilder, seed: int, epoch: int, count: int, batch_size: int,
                 samples: tuple[int, int] | None = None):
        super().__init__()
        self.make_sampler, self.build_targets, self.seed, self.epoch = make_sampler, build_targets, seed, epoch
        self.count = count
        self.samples = samples or (0, batch_size)

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        sampler = self.make_sampler()
        first, stop = self.samples
        for i in range(worker, self.count, workers):
            yield sampler.batch_of([sample_rng(self.seed, self.epoch, i, j) for j in range(first, stop)],
                                   self.build_targets)


def in_workers(dataset: torch.utils.data.Dataset, workers: int, prefetch_factor: int = 2,
               pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """The items of ``dataset``, in order, made by ``workers`` forked processes: forked, so that the
    workers inherit the prepared volumes and the functions that read them instead of pickling them."""
    return torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=workers, prefetch_factor=prefetch_factor,
                                       multiprocessing_context="fork", pin_memory=pin_memory)


def epoch_loader(make_sampler, build_targets: TargetBuilder, seed: int, epoch: int, count: int, batch_size: int,
                 workers: int = 1, samples: tuple[int, int] | None = None, pin_memory: bool = False):
    """Batches of one epoch (:class:`EpochBatches`), prepared in ``workers`` background processes
    (0: in this process). Sampling is Python-heavy; in a thread it would hold the interpreter lock
    that the training loop needs for every tensor operation. ``pin_memory``: page-locked batches,
    for faster copies to a GPU."""
    dataset = EpochBatches(make_sampler, build_targets, seed, epoch, count, batch_size, samples)
    if workers <= 0:
        return iter(dataset)
    return iter(in_workers(dataset, workers, prefetch_factor=4, pin_memory=pin_memory))


def _multiple(size: float, multiple: int) -> int:
    return int(math.ceil(max(1, round(size)) / multiple) * multiple)
