"""Configuration: YAML presets read into frozen dataclasses, one section per pipeline stage.

A preset is ``tiny`` (tests), ``demo`` (the quick CPU path), ``bench`` (the CPU accuracy claims)
or ``paper`` (the paper's GPU configuration), or the path of a YAML file. Unknown keys are
rejected with the list of known ones, so a typo never passes silently. Every run writes the
resolved configuration next to its outputs (:func:`dump_config`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from lesion_harvester.errors import ConfigError
from lesion_harvester.geometry.preprocess import PIXEL_MEAN as STORED_PIXEL_MEAN
from lesion_harvester.geometry.preprocess import WINDOW_HU as STORED_WINDOW_HU

PRESETS = ("tiny", "demo", "bench", "paper")


@dataclass(frozen=True)
class SynthConfig:
    """Synthetic CT benchmark (``lesion-harvester synth``).

    Lesion statistics (size, count, marked fraction) are fixed in ``synth/lesions.py`` and
    ``synth/dataset.py``; a preset changes only resolution, volume counts and slice intervals.
    """

    image_size_px: int = 512
    pixel_mm: tuple[float, float] = (0.65, 0.95)
    slice_intervals_mm: tuple[float, ...] = (1.0, 1.25, 2.0, 2.5, 3.0, 5.0)
    slice_interval_weights: tuple[float, ...] = (0.12, 0.08, 0.2, 0.15, 0.1, 0.35)
    half_extent_mm: tuple[float, float] = (30.0, 45.0)
    max_lesions: int = 30
    noise_hu: tuple[float, float] = (10.0, 22.0)
    # volume counts per split; harvest_test is a subset of harvest
    fully_annotated: int = 10
    harvest: int = 190
    harvest_test: int = 40
    validation: int = 12
    detection_test: int = 45
    workers: int = 2
    png_compress_level: int = 1

    @property
    def total_volumes(self) -> int:
        return self.fully_annotated + self.harvest + self.validation + self.detection_test

    def with_total(self, total: int) -> SynthConfig:
        """Scale the split counts to ``total`` volumes (each split keeps at least one)."""
        if total < 4:
            raise ConfigError(f"--volumes must be at least 4 (one per split), got {total}")
        current = self.total_volumes
        fa = max(1, round(self.fully_annotated * total / current))
        val = max(1, round(self.validation * total / current))
        test = max(1, round(self.detection_test * total / current))
        harvest = max(1, total - fa - val - test)
        while fa + val + test + harvest > total:
            largest = max(("fa", fa), ("val", val), ("test", test), key=lambda kv: kv[1])[0]
            fa, val, test = (fa - (largest == "fa"), val - (largest == "val"), test - (largest == "test"))
        ht = max(1, min(harvest, round(self.harvest_test * harvest / max(self.harvest, 1))))
        return dataclasses.replace(
            self, fully_annotated=fa, harvest=harvest, harvest_test=ht, validation=val, detection_test=test
        )


@dataclass(frozen=True)
class PreprocessConfig:
    """MULAN preprocessing (reference-facts section 2) and the 2.5D context of the LPG."""

    spacing_mm: float = 0.8
    max_size_px: int = 512
    context_mm: float = 2.0
    # "exact": context slices every context_mm (MULAN); "shared": triplet centres rounded to whole
    # slices so that a scan computes each triplet once (geometry.preprocess.context_offsets)
    context_mode: str = "exact"
    # the LPG's input window; prepared volumes are stored with MULAN's whatever this is
    window_hu: tuple[float, float] = (-1024.0, 3071.0)
    pixel_mean: float = 50.0
    body_threshold_hu: float = -768.0

    def fingerprint(self) -> str:
        """Identifies the prepared-volume cache (neither the context nor the input window changes
        prepared volumes; their stored encoding, MULAN's window and mean, is part of the key)."""
        text = json.dumps([self.spacing_mm, self.max_size_px, list(STORED_WINDOW_HU), STORED_PIXEL_MEAN,
                           self.body_threshold_hu])
        return hashlib.sha1(text.encode()).hexdigest()[:10]


@dataclass(frozen=True)
class MSCNConfig:
    """Architecture of the multi-slice CenterNet. The defaults are the paper's: DenseNet-121
    (init 64, growth 32, blocks 6/12/24, truncated after block 3), 9 slices, a 512-channel neck."""

    num_slices: int = 9  # 9: MSCN with 3D context fusion; 3: the plain CenterNet of Table III
    init_features: int = 64
    growth_rate: int = 32
    block_config: tuple[int, ...] = (6, 12, 24)
    bn_size: int = 4
    neck_channels: int = 512
    head_channels: int = 64
    pretrained_path: str | None = None  # a local torchvision DenseNet-121 state dict (ImageNet)


@dataclass(frozen=True)
class LPGTrainConfig:
    """LPG training: crops (or whole slices), augmentation, optimiser and schedule."""

    crop_px: int = 0  # 0: whole slices, as MULAN; else square crops around objects and background
    background_fraction: float = 0.3  # share of crops drawn at random positions
    # where random background crops come from: "all" training volumes, or only the "fully_annotated"
    # ones (V_M, complete labels; all volumes when there are none)
    background_volumes: str = "all"
    scale_jitter: tuple[float, float] = (0.8, 1.2)
    hflip: bool = False
    rotate90: bool = False  # random transposes and flips (the 8 symmetries of the square); crops only
    intensity_jitter: float = 0.0  # contrast x U(1 - j, 1 + j) and a shift of up to j * 50 HU
    noise_hu: float = 0.0  # added Gaussian noise, standard deviation up to this many HU
    max_objects: int = 32
    # in crops from partially labelled volumes, background where the LPG already scores above this
    # is not taught as background (it may be an unmarked lesion); None: every background pixel is
    soft_negative_above: float | None = None
    # hard background: after each epoch, the model's false positives on the fully annotated volumes
    # (complete labels, so these are true negatives) become centres of background crops
    mine_hard_background: bool = False
    mined_fraction: float = 0.5  # share of background crops centred on mined false positives
    mine_min_score: float = 0.2
    mine_per_slice: int = 3
    batch_size: int = 8
    epochs: int = 8
    iters_per_epoch: int = 2000
    optimizer: str = "sgd"  # sgd (MULAN) or adamw
    lr: float = 0.004
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_schedule: str = "step"  # step (x0.1 at lr_steps epochs) or cosine
    lr_steps: tuple[int, ...] = (4, 6)
    warmup_iters: int = 200
    grad_clip: float = 10.0
    amp: bool = True  # mixed precision, CUDA only
    loader_workers: int = 1  # processes preparing batches (0: in the training process)
    seed: int = 0


@dataclass(frozen=True)
class ScanConfig:
    """Whole-volume scanning with the LPG."""

    batch_slices: int = 8
    top_k: int = 100
    shared: bool = True  # compute each triplet once per volume
    amp: bool = True  # half precision on CUDA
    # CenterNet's flip test: average the heatmap and sizes with those of the mirrored slices
    # (twice the compute)
    flip_test: bool = False


@dataclass(frozen=True)
class StackConfig:
    """2D -> 3D stacking (paper Sec. III-B.2)."""

    score_threshold: float = 0.1  # t_G
    link_iou: float = 0.8
    fuse_iou: float = 0.8


@dataclass(frozen=True)
class LPCConfig:
    """Lesion proposal classifier (paper Sec. III-D): one ResNet-18 per view on patches around each
    proposal (its extent padded by 64 px), features concatenated, one linear layer."""

    variant: str = "multiview"  # multiview (axial, coronal, sagittal), axial (2D), or 3d (3D ResNet-18)
    patch_px: int = 64  # samples per side of each view (a cube for 3d)
    pad_px: float = 64.0  # padding of the lesion extent, in original pixels
    # 0: off. Else a second patch per view with this padding, as extra channels: on a coarse CPU grid
    # the 64 px context leaves a 10 px lesion only a few samples wide
    close_up_pad_px: float = 0.0
    windows_hu: tuple[tuple[float, float], ...] = ((-1350.0, 150.0), (-175.0, 275.0), (-450.0, 1050.0))
    widen_factor: float = 1.0  # ResNet-18 channel width (1.0 = the standard ResNet-18)
    pretrained_path: str | None = None  # a local torchvision ResNet-18 state dict (2D variants)
    epochs: int = 12
    batch_size: int = 32
    lr: float = 0.001
    weight_decay: float = 0.0001
    folds: int = 2  # V_M is scored out of fold, so the 95%-precision threshold is not fit on training data
    min_objectness: float = 0.1  # proposals below this s_g are not classified (s_c = 0)
    # with fewer verified proposals than this (a weak early LPG), the known lesion boxes themselves
    # (marks and complete labels, as one-slice proposals) join the positives
    min_positives: int = 20
    max_per_volume: int = 50  # at most this many proposals (by s_g) per volume are classified
    seed: int = 0


@dataclass(frozen=True)
class HarvestConfig:
    """Harvest rounds (paper Sec. III-D, III-E)."""

    rounds: int = 3
    min_new_lesions: int = 1  # stop early when a round adds fewer new lesions than this
    precision: float = 0.95  # the threshold keeps this precision on the fully annotated volumes
    verify_iou: float = 0.5  # P3D IoU for a proposal to cover a mark
    hard_min_objectness: float = 0.5  # hard negatives: the rest with s_g >= this...
    hard_top_per_volume: int = 5  # ...plus this many top-s_g proposals per volume
    # lesion score s_g * s_c**w, w chosen per round among these as the one whose 95%-precision
    # threshold admits the most V_M lesions; (1.0,) is the paper's s_g * s_c
    fusion_exponents: tuple[float, ...] = (1.0,)
    finetune_epochs: int = 2  # rounds 2+: LPG fine-tuning from the previous round's checkpoint
    finetune_iters_per_epoch: int = 500
    finetune_lr_factor: float = 0.5
    lpc_variants: bool = True  # round 1: also train the axial and 3D LPCs (the paper's Fig. 5b)
    # V_M volumes kept out of all LPG training (for the LPG they are harvest volumes: their original
    # marks only) and on which alone the threshold and the fusion exponent are set; 0: all of V_M
    # does both, as in the paper. Why: the LPG's hard-background mining and its training on V_M's
    # complete labels suppress exactly V_M's highest-scored false positives, so V_M looks cleaner
    # than V_H at the scores where the threshold falls.
    calibration_volumes: int = 0
    variant_epochs: int = 0  # epochs of those comparison LPCs (0: as lpc.epochs)


@dataclass(frozen=True)
class Preset:
    """A whole configuration: one dataclass per stage."""

    name: str = "custom"
    synth: SynthConfig = field(default_factory=SynthConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    lpg: MSCNConfig = field(default_factory=MSCNConfig)
    lpg_train: LPGTrainConfig = field(default_factory=LPGTrainConfig)
    scan: ScanConfig = field(default_factory=ScanConfig)
    stack: StackConfig = field(default_factory=StackConfig)
    lpc: LPCConfig = field(default_factory=LPCConfig)
    harvest: HarvestConfig = field(default_factory=HarvestConfig)


def _convert(value, annotation, where: str):
    origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation):
        return from_dict(annotation, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(annotation)
        item_type = args[0] if args else float
        return tuple(_convert(v, item_type, where) for v in value)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None:
            return None
        return _convert(value, options[0], where)
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls, data: dict | None, where: str = "config"):
    """Build dataclass ``cls`` from a dict, rejecting unknown keys and wrong types."""
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known keys: {sorted(known)}")
    kwargs = {k: _convert(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def load_preset(name_or_path: str) -> Preset:
    """Load a built-in preset by name, or a YAML file by path."""
    if name_or_path in PRESETS:
        text = resources.files("lesion_harvester.configs").joinpath(f"{name_or_path}.yaml").read_text()
        where = f"preset '{name_or_path}'"
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise ConfigError(f"{name_or_path}: no such preset or file; presets are {', '.join(PRESETS)}")
        text, where = path.read_text(), str(path)
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: invalid YAML ({exc})") from None
    data.setdefault("name", Path(name_or_path).stem)
    return from_dict(Preset, data, where)


def to_dict(obj) -> dict:
    """A dataclass as plain YAML-ready data (tuples as lists)."""

    def plain(v):
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return plain(obj)


def dump_config(obj, path: str | Path) -> None:
    """Write the resolved configuration as YAML, atomically."""
    from lesion_harvester.io.atomic import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(obj), sort_keys=False))


def non_default(obj) -> dict:
    """The settings of a dataclass that differ from their defaults (nested dataclasses likewise).

    Run fingerprints are taken over these, so that a setting added in a later version, whose
    default keeps the old behaviour, does not stop a run started before from resuming.
    """
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            nested = non_default(value)
            if nested:
                out[f.name] = nested
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if value != default:
            out[f.name] = value
    return out


def settings_fingerprint(preset, *extra) -> str:
    """16 hex digits naming a preset's (or any settings dataclass's) non-default settings plus ``extra``."""
    text = json.dumps([non_default(preset), *extra], default=str, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:16]
