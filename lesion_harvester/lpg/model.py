"""Multi-slice CenterNet (MSCN): CenterNet heads on a MULAN-style 2.5D DenseNet backbone.

Input: ``(B, S, H, W)`` normalized slices around each target slice, S = 9 (or 3 for the plain
CenterNet of the paper's Table III). The S slices are split into S/3 consecutive triplets, each a
3-channel image through one shared DenseNet truncated after dense block 3 (MONAI's layer layout):

    conv0 .. pool0 (stride 4) -> denseblock1 (b1) -> transition1 -> denseblock2 (b2, stride 8)
    -> transition2 (t2, stride 16) -> [fusion a] -> denseblock3 (b3, stride 16)

Fusion (a) concatenates the triplets' t2 maps and a 1x1 conv replaces the central triplet's map.
A top-down neck (1x1 laterals on b3, b2, b1, nearest x2 upsampling, sums) gives one map per triplet
at stride 4 (with ``output_stride: 2`` one more step onto a lateral of the stem's stride-2 map, before
pool0); fusion (b) concatenates them and a 1x1 conv gives the target's map, on which the
CenterNet heads (heatmap, size, offset) sit.

Everything a triplet computes without fusion depends only on that triplet, so a volume scan can
compute it once and reuse it for every target slice that uses the triplet
(:meth:`MSCN.triplet_features`, :meth:`MSCN.side_neck`, :meth:`MSCN.target_heads`): target slice z
uses the triplets centred at z - 3s, z and z + 3s (s = the context step in slices); a triplet's
features before fusion (a), and its whole neck when it sits beside the target, are computed once per
volume (:meth:`MSCN.outputs`). With ``context_mode: shared`` every triplet centre falls on a whole
slice and the reuse is complete. The result equals the per-slice ("naive") computation up to float
rounding.

The MSCN is a :class:`~lesion_harvester.detectors.base.DetectionModel`: CenterNet targets
(:mod:`.targets`), losses (:mod:`.losses`) and decoding (:mod:`.decode`), checkpoints of format
``lesion-harvester-lpg/1`` (:mod:`.checkpoint`). :class:`CenterNet` is the paper's plain 3-slice
CenterNet of Table III, the same model on one triplet.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.nets import DenseNet

from lesion_harvester.config import (
    MAX_MSCN_PARAMETERS,
    InvalidSetting,
    LPGTrainConfig,
    MSCNConfig,
    PreprocessConfig,
    Preset,
    ScanConfig,
    StackConfig,
    from_dict,
    settings_fingerprint,
)
from lesion_harvester.detectors.base import Crop, DetectionModel, SliceDetections
from lesion_harvester.errors import ConfigError, DataError
from lesion_harvester.geometry.preprocess import gather_slices
from lesion_harvester.io.torch_files import load_state, load_weights_only
from lesion_harvester.lpg.checkpoint import FORMAT, checkpoint_settings, checkpoint_stack, model_payload
from lesion_harvester.lpg.decode import decode
from lesion_harvester.lpg.losses import centernet_loss, clamped_sigmoid, loss_counts
from lesion_harvester.lpg.targets import batch_targets

log = logging.getLogger(__name__)

HEATMAP_BIAS = -2.19  # CenterNet: sigmoid(-2.19) = 0.1, a prior that keeps the focal loss stable


class Triplet:
    """Per-triplet features that do not depend on the target slice: the transition-2 map (input of
    fusion (a)) and the 1x1 laterals of dense blocks 1 and 2 (inputs of the top-down neck), and of
    the stem's stride-2 map when the output stride is 2 (else None)."""

    __slots__ = ("t2", "lat1", "lat2", "lat0")

    def __init__(self, t2, lat1, lat2, lat0=None):
        self.t2, self.lat1, self.lat2, self.lat0 = t2, lat1, lat2, lat0

    def index(self, i) -> Triplet:
        return Triplet(self.t2[i], self.lat1[i], self.lat2[i], None if self.lat0 is None else self.lat0[i])


def _head(in_ch: int, mid: int, out_ch: int, bias: float | None = None) -> nn.Sequential:
    head = nn.Sequential(nn.Conv2d(in_ch, mid, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(mid, out_ch, 1))
    if bias is not None:
        nn.init.constant_(head[-1].bias, bias)
    return head


class MSCN(DetectionModel):
    """The LPG network. ``forward(x)`` returns (heatmap logits, size, offset), each (B, C, H/s, W/s)
    with s = ``stride`` (the preset's ``output_stride``, 4 or 2)."""

    FORMAT = FORMAT
    WHAT = "LPG"
    SETTINGS_KEY = "model_config"

    def __init__(self, cfg: MSCNConfig):
        super().__init__()
        if torch.get_default_device().type != "meta":  # laid out on the meta device, a model takes no memory
            check_size(cfg)
        self.stride = cfg.output_stride
        if cfg.num_slices % 3 or cfg.num_slices < 3:
            raise ValueError(f"num_slices must be a multiple of 3, got {cfg.num_slices}")
        if len(cfg.block_config) != 3:
            raise ValueError(f"block_config needs 3 dense blocks (truncated after block 3), got {cfg.block_config}")
        self.cfg = cfg
        self.num_triplets = cfg.num_slices // 3
        dense = DenseNet(spatial_dims=2, in_channels=3, out_channels=1, init_features=cfg.init_features,
                         growth_rate=cfg.growth_rate, block_config=tuple(cfg.block_config) + (1,), bn_size=cfg.bn_size)
        f = dense.features
        self.stem = nn.Sequential(f.conv0, f.norm0, f.relu0, f.pool0)
        self.block1, self.trans1 = f.denseblock1, f.transition1
        self.block2, self.trans2 = f.denseblock2, f.transition2
        self.block3 = f.denseblock3
        c1, c2, c3, ct2 = _channels(cfg)
        n = cfg.neck_channels
        self.lat1, self.lat2, self.lat3 = nn.Conv2d(c1, n, 1), nn.Conv2d(c2, n, 1), nn.Conv2d(c3, n, 1)
        if self.stride == 2:
            self.lat0 = nn.Conv2d(cfg.init_features, n, 1)
        if self.num_triplets > 1:
            self.fuse_a = nn.Conv2d(ct2 * self.num_triplets, ct2, 1)
            self.fuse_b = nn.Conv2d(n * self.num_triplets, n, 1)
        self.hm = _head(n, cfg.head_channels, 1, HEATMAP_BIAS)
        self.wh = _head(n, cfg.head_channels, 2)
        self.reg = _head(n, cfg.head_channels, 2)
        if cfg.pretrained_path:
            load_imagenet_densenet(self, cfg.pretrained_path)

    # --- per-triplet (target-independent) parts --------------------------------------------------
    def triplet_features(self, x3: torch.Tensor) -> Triplet:
        """x3: (N, 3, H, W) -> the triplet's maps before fusion (a) and its laterals."""
        lat0 = None
        if self.stride == 2:
            s2 = x3
            for layer in self.stem[:3]:  # conv0, norm0, relu0: the stride-2 map, before pool0
                s2 = layer(s2)
            lat0 = self.lat0(s2)
            b1 = self.block1(self.stem[3](s2))
        else:
            b1 = self.block1(self.stem(x3))
        b2 = self.block2(self.trans1(b1))
        return Triplet(self.trans2(b2), self.lat1(b1), self.lat2(b2), lat0)

    def _top_down(self, t: Triplet, b3: torch.Tensor) -> torch.Tensor:
        p = self.lat3(b3)
        p = t.lat2 + F.interpolate(p, size=t.lat2.shape[-2:], mode="nearest")
        p = t.lat1 + F.interpolate(p, size=t.lat1.shape[-2:], mode="nearest")
        if t.lat0 is not None:
            p = t.lat0 + F.interpolate(p, size=t.lat0.shape[-2:], mode="nearest")
        return p

    def side_neck(self, t: Triplet) -> torch.Tensor:
        """Neck map of a triplet used beside the target (not fused): (N, C, H/s, W/s)."""
        return self._top_down(t, self.block3(t.t2))

    # --- per-target parts ------------------------------------------------------------------------
    def target_heads(self, t2s: list[torch.Tensor], centre: Triplet, side_necks: list[torch.Tensor | None]):
        """Heads for targets, given every triplet's t2 map (in slice order), the central triplet and the
        necks of the side triplets (None at the centre)."""
        if self.num_triplets == 1:
            neck = self.side_neck(centre)
        else:
            c = self.num_triplets // 2
            fused_t2 = self.fuse_a(torch.cat(t2s, dim=1))
            centre_neck = self._top_down(centre, self.block3(fused_t2))
            neck = self.fuse_b(torch.cat([centre_neck if i == c else side_necks[i] for i in range(len(t2s))], dim=1))
        return self.hm(neck), self.wh(neck), self.reg(neck)

    def forward(self, x: torch.Tensor):
        """x: (B, S, H, W) with H, W multiples of 16. Returns heatmap logits (B, 1, h, w), size and
        offset (B, 2, h, w), h = H / stride."""
        b, s, h, w = x.shape
        k = self.num_triplets
        if s != 3 * k:
            raise ValueError(f"expected {3 * k} slices, got {s}")
        feats = self.triplet_features(x.reshape(b * k, 3, h, w))
        per = [feats.index(slice(i, None, k)) for i in range(k)]  # triplet i of every sample
        sides = [None if i == k // 2 or k == 1 else self.side_neck(per[i]) for i in range(k)]
        return self.target_heads([t.t2 for t in per], per[k // 2], sides)

    # --- the detector: settings, checkpoints, targets, loss, decoding -------------------------------
    @property
    def num_slices(self) -> int:
        return self.cfg.num_slices

    @classmethod
    def settings(cls, preset: Preset) -> MSCNConfig:
        return preset.lpg

    @classmethod
    def training_fingerprint(cls, preset: Preset, data: str | Path, inputs: list) -> str:
        # the LPG's own recipe since its first checkpoints, so that a training killed before this
        # interface existed still resumes
        return settings_fingerprint(Preset(preprocess=preset.preprocess, lpg=preset.lpg, lpg_train=preset.lpg_train),
                                    str(Path(data).resolve()), inputs)

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu",
             payload: dict | None = None) -> tuple[MSCN, PreprocessConfig, StackConfig]:
        payload = payload if payload is not None else cls.read_checkpoint(path)
        model, _, pre = load_model(path, device, payload)
        return model, pre, checkpoint_stack(path, payload)

    def payload(self, pre: PreprocessConfig, stack: StackConfig, **extra) -> dict:
        return model_payload(self, self.cfg, pre, stack, **extra)

    def load_weights(self, payload: dict, path: str | Path) -> None:
        check_weights_fit(self.cfg, payload.get("state_dict"), path)  # one line naming the first odd tensor
        self.load_state_dict(payload["state_dict"])

    def build_targets(self, crops: list[Crop], train: LPGTrainConfig) -> dict[str, torch.Tensor]:
        return batch_targets(crops, self.stride, train.max_objects)

    def loss(self, outputs, targets: dict[str, torch.Tensor], train: LPGTrainConfig,
             totals: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        return centernet_loss(outputs, targets, soft_negative_above=train.soft_negative_above, counts=totals)

    def loss_totals(self, targets: dict[str, torch.Tensor]) -> torch.Tensor:
        return loss_counts(targets)

    def detect_slices(self, volume: torch.Tensor, positions: np.ndarray, targets: list[int],
                      scan: ScanConfig) -> Iterator[SliceDetections]:
        """Top-K peaks of each target slice (``scan.top_k``), triplets shared as ``scan.shared`` says."""
        for chunk, (hm, wh, reg) in self.outputs(volume, positions, targets, scan, scan.shared):
            boxes, scores = decode(hm, wh, reg, scan.top_k, self.stride)
            yield chunk, boxes.float().cpu().numpy(), scores.float().cpu().numpy()

    def compile_parts(self) -> MSCN:
        for name in ("forward", "triplet_features", "side_neck", "target_heads"):
            setattr(self, name, torch.compile(getattr(self, name), dynamic=True))
        return self

    # --- scanning a volume: each triplet computed once -------------------------------------------
    def outputs(self, volume: torch.Tensor, positions: np.ndarray, targets: list[int], scan: ScanConfig,
                shared: bool) -> Iterator:
        """Yields (target indices, (hm logits, wh, reg)) batch by batch; with ``scan.flip_test`` the
        heatmap probabilities and sizes are averaged with those of the left-right mirrored volume,
        mirrored back (offsets stay the plain pass's, as in CenterNet)."""
        plain = self._forward_targets(volume, positions, targets, scan.batch_slices, shared)
        if not scan.flip_test:
            yield from plain
            return
        # mirrored after padding to a multiple of 16, so that output cells mirror onto output cells
        mirrored = self._forward_targets(volume.flip(-1), positions, targets, scan.batch_slices, shared)
        for (chunk, (hm, wh, reg)), (_, (hm_m, wh_m, _)) in zip(plain, mirrored):
            heat = (clamped_sigmoid(hm) + clamped_sigmoid(hm_m).flip(-1)) / 2
            yield chunk, (torch.logit(heat), (wh.float() + wh_m.float().flip(-1)) / 2, reg)

    def _forward_targets(self, volume: torch.Tensor, positions: np.ndarray, targets: list[int], batch_slices: int,
                         shared: bool) -> Iterator:
        """Yields (target indices, (hm logits, wh, reg)) batch by batch."""
        k = self.num_triplets
        batch = max(1, batch_slices)
        if not shared or k == 1:
            for start in range(0, len(targets), batch):
                chunk = targets[start:start + batch]
                x = torch.stack([gather_slices(volume, positions[z]) for z in chunk])
                yield chunk, self(x)
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
                computed = self.triplet_features(x3)
                for i, key in enumerate(group):
                    features[key] = computed.index(slice(i, i + 1))
            sides = list(dict.fromkeys(keys[z][j] for z in chunk for j in range(k) if j != centre))
            sides = [key for key in sides if key not in side_necks]
            for m in range(0, len(sides), batch):
                group = sides[m:m + batch]
                necks = self.side_neck(_cat([features[key] for key in group]))
                for i, key in enumerate(group):
                    side_necks[key] = necks[i:i + 1]
            t2s = [torch.cat([features[keys[z][j]].t2 for z in chunk]) for j in range(k)]
            centre_triplets = _cat([features[keys[z][centre]] for z in chunk])
            side_j = [None if j == centre else torch.cat([side_necks[keys[z][j]] for z in chunk]) for j in range(k)]
            yield chunk, self.target_heads(t2s, centre_triplets, side_j)
            done = start + len(chunk) - 1
            for key in [key for key, last in last_use.items() if last <= done and key in features]:
                features.pop(key)
                side_necks.pop(key, None)


class CenterNet(MSCN):
    """The paper's plain CenterNet of Table III: the MSCN on 3 slices (one triplet, no fusion)."""

    @classmethod
    def configure(cls, preset: Preset) -> Preset:
        return replace(preset, lpg=replace(preset.lpg, num_slices=3))


def _cat(triplets: list[Triplet]) -> Triplet:
    return Triplet(*(None if getattr(triplets[0], f) is None else torch.cat([getattr(t, f) for t in triplets])
                     for f in Triplet.__slots__))


def load_model(path: str | Path, device: str = "cpu", payload: dict | None = None) -> tuple[MSCN, MSCNConfig,
                                                                                         PreprocessConfig]:
    """(MSCN in eval mode, its MSCNConfig, its PreprocessConfig) from a checkpoint; ``payload``: the
    checkpoint already loaded from ``path``."""
    payload = payload if payload is not None else MSCN.read_checkpoint(path)
    # the settings are checked (each size in its range, then the whole model's) and compared with the
    # weights before anything is built: a model_config of init_features 200000 would otherwise ask for 640 GB
    model_cfg = from_dict(MSCNConfig, {**checkpoint_settings(payload, "model_config", path), "pretrained_path": None},
                          f"{path} model_config")
    try:
        check_size(model_cfg)
    except InvalidSetting as exc:
        raise ConfigError(f"{path} model_config: {exc.problem}") from None
    pre = from_dict(PreprocessConfig, checkpoint_settings(payload, "preprocess", path), f"{path} preprocess")
    check_weights_fit(model_cfg, payload.get("state_dict"), path)
    model = MSCN(model_cfg)
    load_state(model, payload, path, "LPG checkpoint")
    return model.to(device).eval(), model_cfg, pre


@functools.lru_cache(maxsize=32)  # every real build counts first; a checkpoint's load counts once
def parameter_count(cfg: MSCNConfig) -> int:
    """Parameters of the MSCN ``cfg`` describes, counted on the model itself laid out on the meta
    device (shapes only, no memory)."""
    with torch.device("meta"):
        return sum(p.numel() for p in MSCN(replace(cfg, pretrained_path=None)).parameters())


def check_size(cfg: MSCNConfig) -> None:
    """An :class:`InvalidSetting` of section ``lpg`` unless the MSCN ``cfg`` describes has at most
    ``MAX_MSCN_PARAMETERS`` parameters. Each size has its range, but their product is what fills
    memory (init_features 1000, growth_rate 256 and 64 layers per block: 4.4 billion parameters)."""
    count = parameter_count(cfg)
    if count > MAX_MSCN_PARAMETERS:
        raise InvalidSetting("lpg", "", f"these sizes describe an LPG of {count:,} parameters, more than the "
                             f"{MAX_MSCN_PARAMETERS:,} allowed (the paper's has {parameter_count(MSCNConfig()):,})")


def check_weights_fit(cfg: MSCNConfig, state_dict, path: str | Path) -> None:
    """A DataError naming ``path`` unless ``state_dict`` holds exactly the tensors (names and shapes) of the
    MSCN that ``cfg`` describes. The model is laid out on the meta device (no memory), so a checkpoint
    whose settings disagree with its weights is refused before a model is built."""
    if not isinstance(state_dict, dict):
        raise DataError(path, "LPG checkpoint without weights (no state_dict)")
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in MSCN(replace(cfg, pretrained_path=None)).state_dict().items()}
    problem = None
    extra = [name for name in state_dict if name not in expected]
    for name, shape in expected.items():
        tensor = state_dict.get(name)
        if not isinstance(tensor, torch.Tensor):
            problem = f"it lacks {name} {list(shape)}"
        elif tuple(tensor.shape) != shape:
            problem = f"{name} is {list(tensor.shape)} in the file, {list(shape)} in the model"
        if problem:
            break
    if problem is None and extra:
        problem = f"{len(extra)} weights such as {extra[0]} are not in the model"
    if problem is not None:
        raise DataError(path, f"the LPG checkpoint's weights do not fit the model its settings (model_config) "
                              f"describe: {problem}")


def _channels(cfg: MSCNConfig) -> tuple[int, int, int, int]:
    """(block1, block2, block3, transition2) output channels."""
    c = cfg.init_features + cfg.block_config[0] * cfg.growth_rate
    c1 = c
    c = c // 2 + cfg.block_config[1] * cfg.growth_rate
    c2 = c
    ct2 = c // 2
    c3 = ct2 + cfg.block_config[2] * cfg.growth_rate
    return c1, c2, c3, ct2


def load_imagenet_densenet(model: MSCN, path: str | Path) -> None:
    """Load a local torchvision-format DenseNet state dict (``features.*`` keys) into the backbone.

    Nothing is downloaded. Keys of layers the truncated backbone lacks (transition3, block 4,
    classifier) are ignored; a missing or mismatched backbone tensor is an error.
    """
    state = load_weights_only(path, "pretrained weights file")
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    targets = {
        "conv0": "stem.0", "norm0": "stem.1", "denseblock1": "block1", "transition1": "trans1",
        "denseblock2": "block2", "transition2": "trans2", "denseblock3": "block3",
    }
    own = model.state_dict()
    loaded = 0
    for key, tensor in state.items():
        parts = key.removeprefix("module.").split(".")
        if parts[0] != "features" or parts[1] not in targets:
            continue
        rest = parts[2:]
        # torchvision: denselayerN.norm1.weight; MONAI: denselayerN.layers.norm1.weight
        if rest and rest[0].startswith("denselayer") and len(rest) == 3:
            rest = [rest[0], "layers", *rest[1:]]
        name = ".".join([targets[parts[1]], *rest])
        if name not in own or own[name].shape != tensor.shape:
            raise DataError(path, f"weight {key} does not fit this backbone (as {name}); is it a DenseNet-121 "
                                  "state dict for the 'paper' architecture?")
        own[name] = tensor
        loaded += 1
    if loaded == 0:
        raise DataError(path, "no DenseNet 'features.*' weights in this file")
    model.load_state_dict(own)
    log.info("loaded %d backbone tensors from %s", loaded, path)
