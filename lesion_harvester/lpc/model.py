"""The LPC networks: ResNet-18 feature extractors (MONAI), one per view, and a linear classifier."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn as nn
from monai.networks.nets import ResNet

from lesion_harvester.config import LPCConfig
from lesion_harvester.errors import DataError
from lesion_harvester.io.torch_files import load_weights_only
from lesion_harvester.lpc.patches import patch_channels
from lesion_harvester.lpc.variants import VARIANTS

log = logging.getLogger(__name__)


def _resnet18(spatial_dims: int, channels: int, widen: float) -> ResNet:
    """ResNet-18 without its classifier (features after global average pooling), torchvision layout."""
    return ResNet("basic", [2, 2, 2, 2], [64, 128, 256, 512], spatial_dims=spatial_dims, n_input_channels=channels,
                  conv1_t_size=7, conv1_t_stride=2, widen_factor=widen, feed_forward=False, bias_downsample=False)


class LesionProposalClassifier(nn.Module):
    """``forward(x) -> logits (N,)``: x is (N, V, C, *[P] * D), the patches of ``cfg.variant``
    (:func:`~lesion_harvester.lpc.patches.extract_patches`): one ResNet-18 per view, in the variant's
    D dimensions, and a linear classifier on their pooled features."""

    def __init__(self, cfg: LPCConfig):
        super().__init__()
        variant = VARIANTS.get(cfg.variant)
        self.cfg = cfg
        channels = patch_channels(cfg)
        dims = variant.spatial_dims
        self.branches = nn.ModuleList(_resnet18(dims, channels, cfg.widen_factor) for _ in range(variant.views))
        features = int(512 * cfg.widen_factor)
        self.fc = nn.Linear(features * len(self.branches), 1)
        if cfg.pretrained_path:
            if dims != 2:
                raise DataError(cfg.pretrained_path, "ImageNet weights fit the 2D LPC variants only")
            for branch in self.branches:
                load_imagenet_resnet18(branch, cfg.pretrained_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [branch(x[:, v]) for v, branch in enumerate(self.branches)]
        return self.fc(torch.cat(features, dim=1))[:, 0]


def load_imagenet_resnet18(branch: ResNet, path: str | Path) -> None:
    """Load a local torchvision ResNet-18 state dict (no download); the classifier is ignored."""
    state = load_weights_only(path, "pretrained weights file")
    own = branch.state_dict()
    wanted = {k: v for k, v in state.items() if not k.startswith("fc.")}
    first = wanted.get("conv1.weight")
    if first is not None and "conv1.weight" in own and own["conv1.weight"].shape[1] == 2 * first.shape[1]:
        # context and close-up channels: each half starts from the RGB filters, halved so that
        # the first layer's response keeps its ImageNet scale
        wanted["conv1.weight"] = torch.cat([first, first], dim=1) / 2
    bad = [k for k, v in wanted.items() if k not in own or own[k].shape != v.shape]
    if bad or not wanted:
        raise DataError(path, f"not a ResNet-18 state dict for this LPC (first mismatch: {bad[:1] or 'no weights'}); "
                              "ImageNet weights need widen_factor 1.0 and 3 windows")
    own.update(wanted)
    branch.load_state_dict(own)
