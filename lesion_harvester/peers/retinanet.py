"""MONAI's RetinaNet as a peer of the LPG: a 2D detector on 3 adjacent slices, stacked into 3D.

The paper's Table III shows that detectors other than its own gain from the harvested labels; an
anchor-based one-stage detector that users already train is MONAI's RetinaNet
(``monai.apps.detection``). It is called here, not copied; this module is the glue:

- :class:`ResNetFPN`, the feature extractor: MONAI's ResNet (``monai.networks.nets.resnet``, up to
  layer 3) under MONAI's ``FeaturePyramidNetwork`` with a max-pooled extra level (strides 4, 8, 16
  and 32). MONAI's own ``resnet_fpn_feature_extractor`` builds the same through torchvision, whose
  wheels need the CUDA build of torch, so it cannot run beside a CPU-only torch.
- :class:`ATSSRetinaNetDetector`, ``RetinaNetDetector`` with its anchor matching written for MONAI's
  ATSS matcher alone: the shipped method first tests for torchvision's ``Matcher``, which cannot be
  imported on such a machine. Losses, sampling and box selection are MONAI's (tested equal to the
  shipped class).
- box conversion: the project's boxes are ``x1, y1, x2, y2`` in inclusive pixel indices, x the
  column (width x2 - x1 + 1). MONAI's boxes follow the axis order of the image tensor, (C, H, W)
  here, so its first coordinate is the *row*: ``(row_min, col_min, row_max, col_max)``, continuous,
  pixel i spanning [i, i + 1) (width max - min). So ``x1..x2, y1..y2`` is ``(y1, x1, y2 + 1, x2 + 1)``:
  :func:`to_monai_boxes`, :func:`from_monai_boxes`.
- training on the LPG's crops (:class:`~lesion_harvester.lpg.data.CropSampler` with 3 slices, the
  preset's ``lpg_train`` augmentation and schedule, no HNSL: an anchor-based detector has no such
  loss) and scanning every slice of a volume, stacked by the project's Kalman tracker.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
from monai.apps.detection.networks.retinanet_network import RetinaNet
from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape
from monai.networks.blocks.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool
from monai.networks.nets import resnet
from tqdm import tqdm

from lesion_harvester.config import (
    PreprocessConfig,
    Preset,
    RetinaNetConfig,
    StackConfig,
    fingerprint,
    from_dict,
    to_dict,
)
from lesion_harvester.device import resolve_device
from lesion_harvester.errors import ConfigError
from lesion_harvester.geometry.preprocess import gather_slices
from lesion_harvester.io.atomic import atomic_write_text
from lesion_harvester.io.logs import log_to_file
from lesion_harvester.io.partial import file_digest
from lesion_harvester.io.prepared_cache import PreparedCache
from lesion_harvester.io.torch_files import check_format, load_state, load_weights_only, written_with
from lesion_harvester.lpg.checkpoint import save_checkpoint
from lesion_harvester.lpg.data import CropSampler, epoch_loader
from lesion_harvester.lpg.propose import scan_to_file
from lesion_harvester.lpg.scan import SliceProposals, network_volume, slice_proposals
from lesion_harvester.lpg.sources import build_sources
from lesion_harvester.lpg.train import lr_factor, make_optimizer
from lesion_harvester.paths import TrainLayout, cache_dir_for
from lesion_harvester.preprocessing import PreparedVolume
from lesion_harvester.stacking.stack import stack_proposals
from lesion_harvester.structures import Tracklet

log = logging.getLogger(__name__)

FORMAT = "lesion-harvester-retinanet/1"
NUM_SLICES = 3  # the slice context of the 3-slice CenterNet: slices z-1, z, z+1 as channels
SIZE_DIVISIBLE = 32  # the coarsest level's stride


# --- boxes ---------------------------------------------------------------------------------------------
def to_monai_boxes(boxes_xyxy_px: np.ndarray) -> torch.Tensor:
    """(N, 4) inclusive pixel boxes ``x1, y1, x2, y2`` -> MONAI's (N, 4) float32 ``row_min, col_min,
    row_max, col_max`` (continuous corners in the axis order of a (C, H, W) image)."""
    b = np.asarray(boxes_xyxy_px, dtype=np.float32).reshape(-1, 4)
    return torch.from_numpy(np.stack([b[:, 1], b[:, 0], b[:, 3] + 1.0, b[:, 2] + 1.0], axis=1))


def from_monai_boxes(boxes: torch.Tensor) -> np.ndarray:
    """MONAI's (N, 4) boxes of a (C, H, W) image -> inclusive pixel boxes ``x1, y1, x2, y2`` (N, 4)
    float64 (the inverse of :func:`to_monai_boxes`)."""
    b = boxes.detach().float().cpu().numpy().astype(np.float64).reshape(-1, 4)
    return np.stack([b[:, 1], b[:, 0], b[:, 3] - 1.0, b[:, 2] - 1.0], axis=1)


# --- the network ---------------------------------------------------------------------------------------
class ResNetFPN(nn.Module):
    """MONAI's ResNet (conv1 .. layer3) under MONAI's FPN: maps at strides 4, 8, 16 and 32."""

    def __init__(self, cfg: RetinaNetConfig):
        super().__init__()
        body = getattr(resnet, f"resnet{cfg.resnet_depth}")(spatial_dims=2, n_input_channels=NUM_SLICES,
                                                               conv1_t_size=7, conv1_t_stride=2)
        self.stem = nn.Sequential(body.conv1, body.bn1, body.act, body.maxpool)
        self.layer1, self.layer2, self.layer3 = body.layer1, body.layer2, body.layer3  # layer4 and fc unused
        channels = [_out_channels(layer) for layer in (self.layer1, self.layer2, self.layer3)]
        self.fpn = FeaturePyramidNetwork(2, channels, cfg.fpn_channels, LastLevelMaxPool(2))
        self.out_channels = cfg.fpn_channels  # read by MONAI's RetinaNet

    def forward(self, x: torch.Tensor) -> OrderedDict:
        """x: (B, 3, H, W) -> OrderedDict of 4 maps (B, C, H/s, W/s), s = 4, 8, 16, 32."""
        c1 = self.layer1(self.stem(x))
        c2 = self.layer2(c1)
        c3 = self.layer3(c2)
        return self.fpn(OrderedDict([("c1", c1), ("c2", c2), ("c3", c3)]))


def _out_channels(layer: nn.Sequential) -> int:
    last = layer[-1]
    convs = [m for m in last.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1].out_channels


class ATSSRetinaNetDetector(RetinaNetDetector):
    """``RetinaNetDetector`` whose anchor matching calls MONAI's ATSS matcher directly: the shipped
    method tests ``isinstance(matcher, torchvision Matcher)`` first, which fails where torchvision
    cannot be imported. Everything else (losses, hard-negative sampling, decoding) is MONAI's."""

    def compute_anchor_matched_idxs(self, anchors, targets, num_anchor_locs_per_level):
        matched = []
        for anchors_i, targets_i in zip(anchors, targets):
            boxes = targets_i[self.target_box_key].to(anchors_i.device)
            if boxes.numel() == 0:  # no lesion: every anchor is background
                matched.append(torch.full((anchors_i.size(0),), -1, dtype=torch.int64, device=anchors_i.device))
                continue
            _, idx = self.proposal_matcher(boxes, anchors_i, num_anchor_locs_per_level, self.num_anchors_per_loc)
            matched.append(idx)
        return matched


def build_detector(cfg: RetinaNetConfig) -> ATSSRetinaNetDetector:
    """A RetinaNet for one class (lesion) with the settings of the preset's ``retinanet`` section."""
    levels = 4
    anchors = AnchorGeneratorWithAnchorShape(feature_map_scales=tuple(2 ** i for i in range(levels)),
                                             base_anchor_shapes=tuple((a, a) for a in cfg.base_anchor_px))
    network = RetinaNet(spatial_dims=2, num_classes=1, num_anchors=len(cfg.base_anchor_px),
                        feature_extractor=ResNetFPN(cfg), size_divisible=SIZE_DIVISIBLE)
    detector = ATSSRetinaNetDetector(network, anchors, spatial_dims=2)
    detector.set_atss_matcher(num_candidates=cfg.atss_candidates, center_in_gt=False)
    detector.set_hard_negative_sampler(batch_size_per_image=cfg.sampler_anchors_per_image,
                                       positive_fraction=cfg.sampler_positive_fraction, pool_size=20, min_neg=16)
    detector.set_target_keys(box_key="boxes", label_key="labels")
    detector.set_box_selector_parameters(score_thresh=cfg.score_threshold, topk_candidates_per_level=1000,
                                         nms_thresh=cfg.nms_iou, detections_per_img=cfg.detections_per_slice)
    return detector


def monai_targets(boxes_xyxy_px: list[np.ndarray]) -> list[dict[str, torch.Tensor]]:
    """Per-image training targets in MONAI's format: continuous boxes, label 0 (lesion)."""
    return [{"boxes": to_monai_boxes(b), "labels": torch.zeros(len(b), dtype=torch.long)} for b in boxes_xyxy_px]


# --- training --------------------------------------------------------------------------------------------
class _BoxBatches:
    """Batches of (images (B, 3, C, C), [boxes (N_i, 4)]) from the LPG's crop sampler."""

    def __init__(self, sampler: CropSampler):
        self.sampler = sampler

    def batch_of(self, rngs: list[np.random.Generator], build_targets=None):
        crops = self.sampler.crops(rngs)
        return np.stack([c.image for c in crops]), [c.positives for c in crops]


def _payload(detector: ATSSRetinaNetDetector, preset: Preset, **extra) -> dict:
    return {"format": FORMAT, "written_with": written_with(), "config": to_dict(preset.retinanet),
            "preprocess": to_dict(preset.preprocess),
            "stack": to_dict(preset.stack), "state_dict": detector.network.state_dict(), **extra}


def train_retinanet(data: str | Path, out_dir: str | Path, preset: Preset, device: str = "auto",
                    fully_annotated: str | None = None, extra_positives: str | None = None,
                    cache_dir: str | Path | None = None, progress: bool = True) -> dict:
    """Train (or resume) the RetinaNet peer into ``out_dir`` (``best.pt`` = the last epoch, there
    being no per-epoch validation for it; ``last.pt`` for resuming; ``train_log.json``); returns the
    summary. Trains on the marks, V_M's labels and ``extra_positives`` (a label set of Table III)."""
    device = resolve_device(device)
    layout = TrainLayout(Path(out_dir))
    cfg = preset.lpg_train
    with log_to_file(layout.log):
        log.info("training the RetinaNet peer on %s into %s (preset %s, device %s)", data, layout.root,
                 preset.name, device)
        start_time = time.time()
        torch.manual_seed(cfg.seed)
        sources = build_sources(data, fully_annotated, extra_positives, None, drop_known_positives=True)
        cache = PreparedCache(cache_dir_for(data, cache_dir), preset.preprocess)
        prepared = {k: cache.get(sources.source, k) for k in tqdm(sources.training.volume_keys,
                                                                  desc="preparing volumes", unit="vol",
                                                                  disable=not progress)}
        detector = build_detector(preset.retinanet).to(device)
        optimizer = make_optimizer(detector.network, cfg)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, cfg))
        # what a resumed training must share with the one it continues
        identity = fingerprint(preset.retinanet, cfg, preset.preprocess, str(Path(data).resolve()), fully_annotated,
                               extra_positives)
        history, start_epoch = [], 0
        if layout.last.is_file():
            state = load_retinanet_checkpoint(layout.last)
            if state.get("identity") != identity:
                raise ConfigError(f"{layout.last}: this folder holds a run with other settings or data; "
                                  "use a new --out folder (or delete it to start over)")
            detector.network.load_state_dict(state["state_dict"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            history, start_epoch = state["history"], state["epoch"] + 1
            torch.set_rng_state(state["rng_torch"])
            log.info("resuming %s after epoch %d", layout.root, start_epoch)
        for epoch in range(start_epoch, cfg.epochs):
            detector.train()

            def make_sampler():
                return _BoxBatches(CropSampler(sources.training, prepared, NUM_SLICES, preset.preprocess, cfg))

            batches = epoch_loader(make_sampler, None, cfg.seed, epoch, cfg.iters_per_epoch, cfg.batch_size,
                                   cfg.loader_workers)
            bar = tqdm(batches, total=cfg.iters_per_epoch, desc=f"RetinaNet epoch {epoch + 1}/{cfg.epochs}",
                       unit="it", disable=not progress, dynamic_ncols=True)
            running, epoch_start = None, time.time()
            for images, boxes in bar:
                images = torch.as_tensor(images, device=device)
                targets = [{k: v.to(device) for k, v in t.items()} for t in monai_targets(list(boxes))]
                losses = detector(images, targets)
                loss = losses[detector.cls_key] + losses[detector.box_reg_key]
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(detector.network.parameters(), cfg.grad_clip)
                optimizer.step()
                scheduler.step()
                value = float(loss.detach())
                running = value if running is None else 0.95 * running + 0.05 * value
                bar.set_postfix(loss=f"{running:.3f}")
            bar.close()
            history.append({"epoch": epoch + 1, "loss": running, "train_s": round(time.time() - epoch_start, 1)})
            log.info("epoch %d: loss %.3f", epoch + 1, running)
            save_checkpoint(layout.best, _payload(detector, preset, epoch=epoch))
            save_checkpoint(layout.last, _payload(
                detector, preset, epoch=epoch, identity=identity, optimizer=optimizer.state_dict(),
                scheduler=scheduler.state_dict(), history=history, rng_torch=torch.get_rng_state()))
        summary = {"epochs": len(history), "history": history, "elapsed_s": round(time.time() - start_time, 1),
                   "device": device, "training_slices": len(sources.training.records)}
        atomic_write_text(layout.train_log, json.dumps(summary, indent=1))
        return summary


# --- scanning -------------------------------------------------------------------------------------------
def load_retinanet_checkpoint(path: str | Path) -> dict:
    return check_format(load_weights_only(path, "checkpoint"), path, FORMAT, "RetinaNet checkpoint",
                        ("config", "preprocess", "stack", "state_dict"))


class RetinaNetScanner:
    """Runs the peer over prepared volumes, every slice with its two neighbours as channels; the
    same interface as the LPG's :class:`~lesion_harvester.lpg.scan.Scanner` for
    :func:`~lesion_harvester.lpg.propose.scan_to_file`."""

    def __init__(self, detector: ATSSRetinaNetDetector, pre: PreprocessConfig, batch_slices: int = 8,
                 device: str = "cpu"):
        self.detector, self.pre, self.batch, self.device = detector.eval(), pre, batch_slices, torch.device(device)

    @torch.no_grad()
    def predict(self, pv: PreparedVolume) -> dict[int, SliceProposals]:
        """2D detections of every slice, in original pixels."""
        volume = network_volume(pv, self.pre, self.device, SIZE_DIVISIBLE)
        positions = pv.context_positions(NUM_SLICES, self.pre)
        result = {}
        for start in range(0, pv.num_slices, self.batch):
            chunk = list(range(start, min(start + self.batch, pv.num_slices)))
            x = torch.stack([gather_slices(volume, positions[z]) for z in chunk])
            for z, found in zip(chunk, self.detector(x)):
                boxes = from_monai_boxes(found[self.detector.target_box_key])
                scores = found[self.detector.pred_score_key].float().cpu().numpy().astype(np.float64)
                result[z] = slice_proposals(pv, boxes, scores)
        return result

    def propose(self, pv: PreparedVolume, stack: StackConfig) -> list[Tracklet]:
        per_slice = self.predict(pv)
        return stack_proposals([(per_slice[z].boxes_xyxy_px, per_slice[z].scores) for z in range(pv.num_slices)],
                               stack)


def propose_retinanet(data: str | Path, checkpoint: str | Path, out: str | Path, split: str | None = None,
                      device: str = "auto", batch_slices: int = 8, cache_dir: str | Path | None = None,
                      progress: bool = True, score_threshold: float | None = None) -> dict[str, list[Tracklet]]:
    """3D proposals of the peer on a split (resumable, as ``propose``), stacked with the stacking
    settings of the preset it was trained with (``score_threshold`` replaces their t_G); returns and
    writes {volume key: tracklets}."""
    device = resolve_device(device)
    payload = load_retinanet_checkpoint(checkpoint)
    cfg = from_dict(RetinaNetConfig, payload["config"], f"{checkpoint} config")
    pre = from_dict(PreprocessConfig, payload["preprocess"], f"{checkpoint} preprocess")
    stack = from_dict(StackConfig, payload["stack"], f"{checkpoint} stack")
    if score_threshold is not None:
        stack = dataclasses.replace(stack, score_threshold=score_threshold)
    detector = build_detector(cfg)
    load_state(detector.network, payload, checkpoint, "RetinaNet checkpoint")
    scanner = RetinaNetScanner(detector.to(device), pre, batch_slices, device)
    return scan_to_file(data, scanner, pre, stack, out, file_digest(checkpoint), [], split, None, cache_dir,
                        progress)
