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
- :class:`RetinaNetModel`, the detector contract of :mod:`lesion_harvester.detectors.base` over
  MONAI's detector: trained by the LPG's loop on its crops (3 slices, the preset's ``lpg_train``
  augmentation and schedule; no HNSL: an anchor-based detector has no such loss; no per-epoch
  validation: ``best.pt`` is the last epoch) and scanned over every slice of a volume by the LPG's
  scanner, stacked by the project's Kalman tracker.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
from monai.apps.detection.networks.retinanet_network import RetinaNet
from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape
from monai.apps.detection.utils.detector_utils import check_training_targets, preprocess_images
from monai.apps.detection.utils.predict_utils import ensure_dict_value_to_list_
from monai.networks.blocks.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool
from monai.networks.nets import resnet

from lesion_harvester.config import (
    LPGTrainConfig,
    PreprocessConfig,
    Preset,
    RetinaNetConfig,
    ScanConfig,
    StackConfig,
    fingerprint,
    from_dict,
)
from lesion_harvester.detectors.base import Crop, DetectionModel, SliceDetections
from lesion_harvester.geometry.preprocess import gather_slices
from lesion_harvester.io.torch_files import check_format, load_state, load_weights_only
from lesion_harvester.lpg.checkpoint import model_payload

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


# --- the detector contract -------------------------------------------------------------------------------
class RetinaNetModel(DetectionModel):
    """MONAI's RetinaNet as a :class:`~lesion_harvester.detectors.base.DetectionModel`.

    ``forward(x)`` (x: (B, 3, H, W)) returns MONAI's head outputs with the padded images they were
    computed on; :meth:`loss` and :meth:`decode` run the rest of ``RetinaNetDetector.forward`` through
    its own methods (anchors, matching and losses in training; box selection in evaluation), the
    same calls in the same order (tested equal to calling the detector). Checkpoints hold
    ``detector.network``'s weights under the format ``lesion-harvester-retinanet/1``.
    """

    FORMAT = FORMAT
    WHAT = "RetinaNet"
    validated = False  # best.pt is the last epoch (its Table III rows were trained so)
    hard_negatives = False  # an anchor-based detector has no HNSL
    distributed = False  # MONAI's losses are normalised by each process's own batch
    amp = False  # trained and scanned in float32, as before it shared the LPG's loop
    size_divisible = SIZE_DIVISIBLE
    num_slices = NUM_SLICES

    def __init__(self, cfg: RetinaNetConfig):
        super().__init__()
        self.config = cfg
        self.detector = build_detector(cfg)

    @classmethod
    def settings(cls, preset: Preset) -> RetinaNetConfig:
        return preset.retinanet

    @classmethod
    def training_fingerprint(cls, preset: Preset, data: str | Path, inputs: list) -> str:
        # the peer's recipe before it shared the LPG's loop (which always left known positives out), so
        # that a training killed then still resumes; initial weights and excluded volumes count where given
        fully_annotated, extra_positives, _hard_negatives, *more = inputs
        more = [x for x in more if x and x != "drop_known_positives"]
        return fingerprint(preset.retinanet, preset.lpg_train, preset.preprocess, str(Path(data).resolve()),
                           fully_annotated, extra_positives, *more)

    @classmethod
    def read_checkpoint(cls, path: str | Path, required: tuple[str, ...] = ()) -> dict:
        payload = load_weights_only(path, "checkpoint")
        if isinstance(payload, dict) and "identity" in payload:  # last.pt of the peer's own loop named it so
            payload.setdefault("fingerprint", payload["identity"])
        return check_format(payload, path, FORMAT, "RetinaNet checkpoint",
                            ("config", "preprocess", "stack", "state_dict", *required))

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu",
             payload: dict | None = None) -> tuple[RetinaNetModel, PreprocessConfig, StackConfig]:
        payload = payload if payload is not None else cls.read_checkpoint(path)
        model = cls(from_dict(RetinaNetConfig, payload["config"], f"{path} config"))
        pre = from_dict(PreprocessConfig, payload["preprocess"], f"{path} preprocess")
        stack = from_dict(StackConfig, payload["stack"], f"{path} stack")
        model.load_weights(payload, path)
        return model.to(device).eval(), pre, stack

    def payload(self, pre: PreprocessConfig, stack: StackConfig, **extra) -> dict:
        return model_payload(self, self.config, pre, stack, **extra)

    def load_weights(self, payload: dict, path: str | Path) -> None:
        load_state(self.detector.network, payload, path, "RetinaNet checkpoint")

    def weights(self) -> nn.Module:
        return self.detector.network

    def build_targets(self, crops: list[Crop], train: LPGTrainConfig) -> list[dict[str, torch.Tensor]]:
        return monai_targets([crop.positives for crop in crops])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list, dict[str, list[torch.Tensor]]]:
        """x: (B, 3, H, W) -> (the images padded to a multiple of 32, their sizes before padding,
        {cls_key: [(B, A, h, w) per level], box_reg_key: [(B, 4A, h, w) per level]})."""
        d = self.detector
        images, image_sizes = preprocess_images(x, d.spatial_dims, d.size_divisible)
        head = d.network(images)
        ensure_dict_value_to_list_(head)
        return images, image_sizes, head

    def _anchored(self, images: torch.Tensor, head: dict) -> tuple[dict[str, torch.Tensor], list[int]]:
        """The head outputs per anchor (MONAI's layout), once the anchors of ``images`` are generated."""
        d = self.detector
        d.generate_anchors(images, head)
        locations = [x.shape[2:].numel() for x in head[d.cls_key]]
        return {key: d._reshape_maps(head[key]) for key in (d.cls_key, d.box_reg_key)}, locations

    def loss(self, outputs, targets: list[dict[str, torch.Tensor]], train: LPGTrainConfig,
             totals: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        d = self.detector
        images, _, head = outputs
        targets = check_training_targets(images, targets, d.spatial_dims, d.target_label_key, d.target_box_key)
        per_anchor, locations = self._anchored(images, head)
        losses = d.compute_loss(per_anchor, targets, d.anchors, locations)
        return losses[d.cls_key] + losses[d.box_reg_key], {"cls": float(losses[d.cls_key].detach()),
                                                           "box": float(losses[d.box_reg_key].detach())}

    def decode(self, outputs) -> list[dict[str, torch.Tensor]]:
        """MONAI's detections of each image of ``forward``'s ``outputs`` (boxes, labels, scores)."""
        images, image_sizes, head = outputs
        per_anchor, locations = self._anchored(images, head)
        return self.detector.postprocess_detections(per_anchor, self.detector.anchors, image_sizes, locations)

    def detect_slices(self, volume: torch.Tensor, positions: np.ndarray, targets: list[int],
                      scan: ScanConfig) -> Iterator[SliceDetections]:
        """MONAI's box selection on each target slice (``retinanet.score_threshold``, NMS and
        ``detections_per_slice``); ``scan.batch_slices`` slices at a time."""
        d = self.detector
        batch = max(1, scan.batch_slices)
        for start in range(0, len(targets), batch):
            chunk = targets[start:start + batch]
            found = self.decode(self(torch.stack([gather_slices(volume, positions[z]) for z in chunk])))
            yield (chunk, [from_monai_boxes(f[d.target_box_key]) for f in found],
                   [f[d.pred_score_key].float().cpu().numpy().astype(np.float64) for f in found])
