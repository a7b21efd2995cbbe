"""Configuration: YAML presets read into frozen dataclasses, one section per pipeline stage.

A preset is ``tiny`` (tests), ``demo`` (the quick CPU path), ``bench`` (the CPU accuracy claims)
or ``paper`` (the paper's GPU configuration), or the path of a YAML file. A YAML preset starts from
another (``base: bench``, or a path relative to the file) and changes only some settings, or gives
every setting (as the ``config.yaml`` of a run does): a file without a base that leaves a setting
out, or an empty file, is an error, since it would silently mean the paper's full-size settings.
Single settings can also be changed on the command line (``--set lpg_train.iters_per_epoch=600``,
:func:`apply_overrides`).

Every setting is checked when the configuration is built, however it is built (YAML, keyword
arguments, ``dataclasses.replace``): unknown keys are rejected with the list of known ones, a choice
(a ``Literal`` field) with its allowed values, a number out of range with the range, each as one line
naming the key (:func:`check_settings`), so a typo ends the run before any work. Every run writes the
resolved configuration next to its outputs (:func:`dump_config`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import numbers
import re
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from lesion_harvester.errors import ConfigError
from lesion_harvester.geometry.preprocess import PIXEL_MEAN as STORED_PIXEL_MEAN
from lesion_harvester.geometry.preprocess import WINDOW_HU as STORED_WINDOW_HU

PRESETS = ("tiny", "demo", "bench", "paper")
# The largest LPG a configuration may describe: 14x the paper's 7.1 million parameters, 400 MB of
# float32 weights (more is a typo or a hostile checkpoint, not a model this pipeline trains)
MAX_MSCN_PARAMETERS = 100_000_000

# The choices of the settings that take one of a few values; checked whenever a config is built
ContextMode = Literal["exact", "shared"]
NumSlices = Literal[3, 9]
OutputStride = Literal[4, 2]
Optimizer = Literal["sgd", "adamw"]
LRSchedule = Literal["step", "cosine"]
BackgroundVolumes = Literal["all", "fully_annotated"]
LPCVariant = Literal["multiview", "axial", "3d"]
NegativeSampling = Literal["uniform", "matched"]
ThresholdRule = Literal["vm", "marks", "combined"]
AmpDtype = Literal["float16", "bfloat16"]
FusionChoice = Literal["admitted", "ap"]
KeptEpoch = Literal["validation", "last"]
ResNetDepth = Literal[10, 18, 34]


class _Checked:
    """Base of the section dataclasses: every instance is checked as it is built (also by
    ``dataclasses.replace``), see :func:`check_settings`."""

    __slots__ = ()

    def __post_init__(self) -> None:
        problem = check_settings(self)
        if problem is not None:
            raise InvalidSetting(_section_name(type(self)), *problem)


class InvalidSetting(ConfigError):
    """A setting out of its choices or range: ``key`` (within its section) and ``problem``."""

    def __init__(self, section: str, key: str, problem: str):
        self.section, self.key, self.problem = section, key, problem
        super().__init__(f"{_join(section, key)}: {problem}")

    def __reduce__(self):  # so that it crosses process boundaries (loader workers) intact
        return InvalidSetting, (self.section, self.key, self.problem)


@dataclass(frozen=True)
class SynthConfig(_Checked):
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

    def __post_init__(self) -> None:
        super().__post_init__()
        weights = self.slice_interval_weights
        if len(weights) != len(self.slice_intervals_mm) or sum(weights) <= 0:
            raise InvalidSetting("synth", "slice_interval_weights", "expected one weight per slice interval "
                                 f"({len(self.slice_intervals_mm)}), not all 0, got {_show(weights)}")
        if self.harvest_test > self.harvest:
            raise InvalidSetting("synth", "harvest_test", f"expected at most synth.harvest ({self.harvest}) volumes "
                                 f"(V_H^test is a part of V_H), got {self.harvest_test}")
        if self.total_volumes < 1:
            raise InvalidSetting("synth", "harvest", "the split counts add up to no volume at all")

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
class PreprocessConfig(_Checked):
    """MULAN preprocessing (reference-facts section 2) and the 2.5D context of the LPG."""

    spacing_mm: float = 0.8
    max_size_px: int = 512
    context_mm: float = 2.0
    # "exact": context slices every context_mm (MULAN); "shared": triplet centres rounded to whole
    # slices so that a scan computes each triplet once (geometry.preprocess.context_offsets)
    context_mode: ContextMode = "exact"
    # the LPG's input window; prepared volumes are stored with MULAN's whatever this is
    window_hu: tuple[float, float] = (-1024.0, 3071.0)
    pixel_mean: float = 50.0
    body_threshold_hu: float = -768.0

    def fingerprint(self) -> str:
        """Identifies the prepared-volume cache (neither the context nor the input window changes
        prepared volumes; their stored encoding, MULAN's window and mean, is part of the key)."""
        # 10 digits: the folder names of caches made before fingerprints had one function
        return fingerprint(self.spacing_mm, self.max_size_px, list(STORED_WINDOW_HU), STORED_PIXEL_MEAN,
                           self.body_threshold_hu, digits=10)


@dataclass(frozen=True)
class MSCNConfig(_Checked):
    """Architecture of the multi-slice CenterNet. The defaults are the paper's: DenseNet-121
    (init 64, growth 32, blocks 6/12/24, truncated after block 3), 9 slices, a 512-channel neck."""

    num_slices: NumSlices = 9  # 9: MSCN with 3D context fusion; 3: the plain CenterNet of Table III
    init_features: int = 64
    growth_rate: int = 32
    block_config: tuple[int, ...] = (6, 12, 24)
    bn_size: int = 4
    neck_channels: int = 512
    head_channels: int = 64
    # 4: CenterNet's heads at a quarter of the input; 2: one more top-down step, onto the stem's
    # stride-2 map, for lesions only a few pixels wide (more head compute, finer centres and sizes)
    output_stride: OutputStride = 4
    pretrained_path: str | None = None  # a local torchvision DenseNet-121 state dict (ImageNet)

    def __post_init__(self) -> None:
        super().__post_init__()
        # each size is bounded, but their product is what fills memory (init_features: 200000 asked
        # for 640 GB): the whole model is bounded before anything is built
        if self.parameter_count() > MAX_MSCN_PARAMETERS:
            raise InvalidSetting("lpg", "", f"these sizes describe an LPG of {self.parameter_count():,} "
                                 f"parameters, more than the {MAX_MSCN_PARAMETERS:,} allowed (the paper's has "
                                 f"{MSCNConfig.paper_parameters():,})")

    def parameter_count(self) -> int:
        """Parameters of the MSCN these settings describe (:mod:`lesion_harvester.lpg.model`; the same as a
        built model's count, tested), so that a size can be refused before a model is built."""
        if not (len(self.block_config) == 3 and all(isinstance(v, int) and v > 0 for v in (
                self.init_features, self.growth_rate, self.bn_size, self.neck_channels, self.head_channels,
                *self.block_config))):
            return 0  # the ranges of check_settings report such settings
        g, inner = self.growth_rate, self.bn_size * self.growth_rate
        n, h, k = self.neck_channels, self.head_channels, self.num_slices // 3

        def dense_block(c: int, layers: int) -> tuple[int, int]:  # (parameters, channels out)
            total = 0
            for _ in range(layers):  # norm, 1x1 conv to bn_size * growth, norm, 3x3 conv to growth
                total += 2 * c + c * inner + 2 * inner + 9 * inner * g
                c += g
            return total, c

        def transition(c: int) -> tuple[int, int]:  # norm, 1x1 conv halving the channels
            return 2 * c + c * (c // 2), c // 2

        total = 3 * 49 * self.init_features + 2 * self.init_features  # conv0 (7x7, no bias), norm0
        p1, c1 = dense_block(self.init_features, self.block_config[0])
        pt1, c = transition(c1)
        p2, c2 = dense_block(c, self.block_config[1])
        pt2, ct2 = transition(c2)
        p3, c3 = dense_block(ct2, self.block_config[2])
        total += p1 + pt1 + p2 + pt2 + p3
        total += sum((c_in + 1) * n for c_in in (c1, c2, c3))  # the neck's 1x1 laterals
        if self.output_stride == 2:
            total += (self.init_features + 1) * n
        if k > 1:  # fusions (a) and (b)
            total += (ct2 * k + 1) * ct2 + (n * k + 1) * n
        return total + sum((9 * n + 1) * h + (h + 1) * out for out in (1, 2, 2))  # heatmap, size, offset heads

    @staticmethod
    def paper_parameters() -> int:
        return MSCNConfig().parameter_count()


@dataclass(frozen=True)
class LPGTrainConfig(_Checked):
    """LPG training: crops (or whole slices), augmentation, optimiser and schedule."""

    crop_px: int = 0  # 0: whole slices, as MULAN; else square crops around objects and background
    background_fraction: float = 0.3  # share of crops drawn at random positions
    # where random background crops come from: "all" training volumes, or only the "fully_annotated"
    # ones (V_M, complete labels; all volumes when there are none)
    background_volumes: BackgroundVolumes = "all"
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
    optimizer: Optimizer = "sgd"  # sgd (MULAN) or adamw
    lr: float = 0.004
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_schedule: LRSchedule = "step"  # step (x0.1 at lr_steps epochs) or cosine
    lr_steps: tuple[int, ...] = (4, 6)
    warmup_iters: int = 200
    grad_clip: float = 10.0
    # which epoch best.pt keeps: the one with the best validation score, or the last (the converged
    # model of a cosine schedule), for a validation set too small to choose on: on demo seed 1 the 4
    # validation volumes chose epoch 2 of 6, whose AP on V_H^test is 0.256 against the last's 0.327
    keep_epoch: KeptEpoch = "validation"
    amp: bool = True  # mixed precision, CUDA only
    amp_dtype: AmpDtype = "float16"  # bfloat16: no loss scaling needed (Ampere and later GPUs)
    loader_workers: int = 1  # processes preparing batches (0: in the training process)
    seed: int = 0


@dataclass(frozen=True)
class ScanConfig(_Checked):
    """Whole-volume scanning with the LPG."""

    batch_slices: int = 8
    # processes preparing the next volumes (reading, resampling, caching) while the LPG scans;
    # 0: one background thread
    loader_workers: int = 0
    top_k: int = 100
    shared: bool = True  # compute each triplet once per volume
    amp: bool = True  # half precision on CUDA
    amp_dtype: AmpDtype = "float16"
    channels_last: bool = False  # NHWC activations: faster convolutions on tensor-core GPUs
    compile: bool = False  # torch.compile the network's parts (the first volumes pay the compile time)
    # CenterNet's flip test: average the heatmap and sizes with those of the mirrored slices
    # (twice the compute)
    flip_test: bool = False


@dataclass(frozen=True)
class StackConfig(_Checked):
    """2D -> 3D stacking (paper Sec. III-B.2)."""

    score_threshold: float = 0.1  # t_G
    link_iou: float = 0.8
    fuse_iou: float = 0.8


@dataclass(frozen=True)
class LPCConfig(_Checked):
    """Lesion proposal classifier (paper Sec. III-D): one ResNet-18 per view on patches around each
    proposal (its extent padded by 64 px), features concatenated, one linear layer."""

    variant: LPCVariant = "multiview"  # multiview (axial, coronal, sagittal), axial (2D), or 3d (3D ResNet-18)
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
    loader_workers: int = 0  # processes cutting the proposals' patches, one volume each (0: in this process)
    max_per_volume: int = 50  # at most this many proposals (by s_g) per volume are classified
    # how a batch's negatives are drawn: "uniform", or "matched" to the positives' joint distribution of
    # s_g and size (the negatives are mostly small, low-s_g proposals, the positives mostly large marked
    # lesions: matched, the LPC cannot rank by those two alone, which the LPG already does)
    negatives: NegativeSampling = "uniform"
    seed: int = 0


@dataclass(frozen=True)
class RetinaNetConfig(_Checked):
    """The peer detector of Table III (peers/retinanet.py): MONAI's RetinaNet on 3 adjacent slices
    as channels, trained with the LPG's crops, augmentation and schedule (``lpg_train``). The
    defaults follow MONAI's LUNA16 detection tutorial where it applies (ATSS matching, hard-negative
    sampling, BCE and smooth-L1 losses)."""

    resnet_depth: ResNetDepth = 18  # MONAI's ResNet trunk, up to layer 3 (strides 4, 8, 16)
    fpn_channels: int = 64
    # square anchors (px of the network input) at the stride-4 level, doubled at each coarser level
    # (strides 8, 16 and the max-pooled 32), for lesions of a few to about 200 pixels
    base_anchor_px: tuple[float, ...] = (6.0, 10.0, 16.0)
    atss_candidates: int = 4  # ATSS matcher: candidate anchors per level and lesion
    sampler_anchors_per_image: int = 64  # hard-negative sampler: anchors per image in the classification loss
    sampler_positive_fraction: float = 0.3
    score_threshold: float = 0.02  # 2D detections kept per slice above this
    nms_iou: float = 0.22
    detections_per_slice: int = 100


@dataclass(frozen=True)
class Table3Config(_Checked):
    """Detectors trained on a harvest's label sets (peers/table3.py, the paper's Table III): every row
    trains with ``lpg_train``'s crops, augmentation and schedule, except what is set here."""

    epochs: int = 0  # each row's training epochs (0: lpg_train.epochs, the LPG's own)
    # the 2D detections each row keeps for stacking when it scans the test split: low, because the
    # HNSL compresses scores and a lesion slice under the cut is never stacked
    score_threshold: float = 0.05


@dataclass(frozen=True)
class HarvestConfig(_Checked):
    """Harvest rounds (paper Sec. III-D, III-E)."""

    rounds: int = 3
    min_new_lesions: int = 1  # stop early when a round adds fewer new lesions than this
    precision: float = 0.95  # the threshold keeps this precision on the fully annotated volumes
    verify_iou: float = 0.5  # P3D IoU for a proposal to cover a mark
    # hard negatives (Sec. III-D): of the proposals under the threshold, those with s_g >= this...
    hard_min_objectness: float = 0.5
    hard_top_per_volume: int = 5  # ...at most this many per volume (the highest s_g); none on a known lesion
    # lesion score s_g * s_c**w, w chosen per round among these as the one whose 95%-precision
    # threshold admits the most V_M lesions; (1.0,) is the paper's s_g * s_c
    fusion_exponents: tuple[float, ...] = (1.0,)
    # how w is chosen on V_M: "admitted" (the most V_M lesions above the threshold) or "ap" (the best
    # AP of V_M's whole out-of-fold ranking; varies less on a small V_M)
    fusion_choice: FusionChoice = "admitted"
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
    # how the threshold's precision is estimated (harvest/precision.py): "vm" counts on V_M alone (the
    # paper); "marks" estimates it from the RECIST marks of calibration volumes of V_H (positive-
    # unlabeled, corrected for lesion size with V_M's marked share); "combined" pools both
    threshold: ThresholdRule = "vm"
    # share of V_H volumes (never V_H^test) whose marks no LPG or LPC trains on, so that the marks
    # can tell how often the harvest finds a lesion; needed by threshold "marks" and "combined" and
    # reported whenever > 0
    calibration_marks: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.threshold != "vm" and self.calibration_marks <= 0:
            raise InvalidSetting("harvest", "threshold", f"'{self.threshold}' estimates the precision from "
                                 "held-out marks: set harvest.calibration_marks above 0 (e.g. 0.2)")


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
    retinanet: RetinaNetConfig = field(default_factory=RetinaNetConfig)
    harvest: HarvestConfig = field(default_factory=HarvestConfig)
    table3: Table3Config = field(default_factory=Table3Config)


# --- checking ------------------------------------------------------------------------------------


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _is_window(v) -> bool:
    return isinstance(v, (tuple, list)) and len(v) == 2 and all(map(_is_number, v)) and v[0] < v[1]


def _at_least(n: int) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: _is_int(v) and v >= n), f"an integer >= {n}"


def _int_between(low: int, high: int, what: str = "an integer") -> tuple[Callable[[Any], bool], str]:
    return (lambda v: _is_int(v) and low <= v <= high), f"{what} in [{low}, {high}]"


def _number_between(low: float, high: float, what: str = "a number", open_low: bool = False,
                    open_high: bool = False) -> tuple[Callable[[Any], bool], str]:
    def test(v) -> bool:
        return (_is_number(v) and (v > low if open_low else v >= low) and (v < high if open_high else v <= high))

    return test, f"{what} in {'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"


def _ordered_pair(minimum: float, strict: bool = False) -> Callable[[Any], bool]:
    """A range to draw from: [low, high] with low <= high and low >= ``minimum`` (> with ``strict``)."""
    def test(v) -> bool:
        return (isinstance(v, (tuple, list)) and len(v) == 2 and all(map(_is_number, v))
                and (v[0] > minimum if strict else v[0] >= minimum) and v[0] <= v[1])

    return test


def _all(test: Callable[[Any], bool]) -> Callable[[Any], bool]:
    """One or more items, each passing ``test``."""
    return lambda v: isinstance(v, (tuple, list)) and len(v) > 0 and all(map(test, v))


_POSITIVE = (lambda v: _is_number(v) and v > 0), "a number > 0"
_NON_NEGATIVE = (lambda v: _is_number(v) and v >= 0), "a number >= 0"
_SCORE = _number_between(0, 1, "a score")
_IOU = _number_between(0, 1, "an IoU")
_SHARE = _number_between(0, 1, "a share")
_WORKERS = _at_least(0)
_SEED = _at_least(0)  # numpy refuses negative seeds
# Sizes of a network, each bounded so that no setting can ask for terabytes before a model is built
# (MSCNConfig also bounds the whole LPG's parameter count, as sizes multiply)
_CHANNELS = _int_between(1, 4096, "a channel count")

# Ranges of numeric settings, by "section.key": (test, what is expected). Checked together with the
# type hints (choices, finite floats, tuple lengths) whenever a section is built. Every numeric
# setting has one: sizes and counts positive, rates finite and positive, fractions in [0, 1],
# ranges and windows ordered.
_RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "synth.image_size_px": _int_between(16, 4096, "a size in pixels"),
    "synth.pixel_mm": (_ordered_pair(0, strict=True), "[low, high] pixel sizes in mm with 0 < low <= high"),
    "synth.slice_intervals_mm": (_all(lambda v: _is_number(v) and v > 0), "one or more slice intervals > 0 in mm"),
    "synth.slice_interval_weights": (_all(lambda v: _is_number(v) and v >= 0), "one or more weights >= 0"),
    "synth.half_extent_mm": (_ordered_pair(0, strict=True), "[low, high] in mm with 0 < low <= high"),
    "synth.max_lesions": _at_least(1),
    "synth.noise_hu": (_ordered_pair(0), "[low, high] in HU with 0 <= low <= high"),
    "synth.fully_annotated": _at_least(0),
    "synth.harvest": _at_least(0),
    "synth.harvest_test": _at_least(0),
    "synth.validation": _at_least(0),
    "synth.detection_test": _at_least(0),
    "synth.workers": _at_least(1),
    "synth.png_compress_level": _int_between(0, 9, "a zlib level"),
    "preprocess.spacing_mm": _POSITIVE,
    "preprocess.max_size_px": _int_between(16, 8192, "a size in pixels"),
    "preprocess.context_mm": _POSITIVE,
    "preprocess.window_hu": (_is_window, "[low, high] in HU with low < high"),
    "lpg.init_features": _CHANNELS,
    "lpg.growth_rate": _int_between(1, 512, "a channel count"),
    "lpg.block_config": (lambda v: isinstance(v, (tuple, list)) and len(v) == 3
                         and all(_is_int(n) and 1 <= n <= 128 for n in v),
                         "3 dense blocks of 1 to 128 layers (the backbone ends after block 3)"),
    "lpg.bn_size": _int_between(1, 16),
    "lpg.neck_channels": _CHANNELS,
    "lpg.head_channels": _CHANNELS,
    # the network's input must be a multiple of its coarsest stride, 16
    "lpg_train.crop_px": ((lambda v: _is_int(v) and v >= 0 and v % 16 == 0 and v <= 4096),
                          "0 (whole slices) or a multiple of 16 up to 4096 pixels"),
    "lpg_train.background_fraction": _SHARE,
    "lpg_train.scale_jitter": (_ordered_pair(0, strict=True), "[low, high] scale factors with 0 < low <= high"),
    "lpg_train.intensity_jitter": _number_between(0, 1, "a fraction", open_high=True),
    "lpg_train.noise_hu": _NON_NEGATIVE,
    "lpg_train.max_objects": _at_least(1),
    "lpg_train.soft_negative_above": (lambda v: v is None or (_is_number(v) and 0 < v < 1),
                                      "a score between 0 and 1 (both excluded) or null"),
    "lpg_train.mined_fraction": _SHARE,
    "lpg_train.mine_min_score": _SCORE,
    "lpg_train.mine_per_slice": _at_least(1),
    "lpg_train.batch_size": _at_least(1),
    "lpg_train.epochs": _at_least(1),
    "lpg_train.iters_per_epoch": _at_least(1),
    "lpg_train.lr": _POSITIVE,
    "lpg_train.momentum": _number_between(0, 1, open_high=True),
    "lpg_train.weight_decay": _NON_NEGATIVE,
    "lpg_train.lr_steps": (lambda v: isinstance(v, (tuple, list)) and all(_is_int(n) and n >= 1 for n in v)
                           and list(v) == sorted(set(v)), "ascending epochs >= 1 (or an empty list)"),
    "lpg_train.warmup_iters": _at_least(0),
    "lpg_train.grad_clip": _POSITIVE,
    "lpg_train.loader_workers": _WORKERS,
    "lpg_train.seed": _SEED,
    "scan.batch_slices": _at_least(1),
    "scan.loader_workers": _WORKERS,
    "scan.top_k": _at_least(1),
    "stack.score_threshold": _SCORE,
    "stack.link_iou": _IOU,
    "stack.fuse_iou": _IOU,
    "lpc.patch_px": _int_between(8, 1024, "a size in pixels"),
    "lpc.pad_px": _NON_NEGATIVE,
    "lpc.close_up_pad_px": _NON_NEGATIVE,
    "lpc.windows_hu": (lambda v: isinstance(v, (tuple, list)) and len(v) > 0 and all(map(_is_window, v)),
                       "one or more [low, high] windows in HU with low < high"),
    "lpc.widen_factor": _number_between(0, 16, "a width factor", open_low=True),
    "lpc.epochs": _at_least(1),
    "lpc.batch_size": _at_least(1),
    "lpc.lr": _POSITIVE,
    "lpc.weight_decay": _NON_NEGATIVE,
    "lpc.folds": _at_least(1),
    "lpc.min_objectness": _SCORE,
    "lpc.min_positives": _at_least(0),
    "lpc.loader_workers": _WORKERS,
    "lpc.max_per_volume": _at_least(1),
    "lpc.seed": _SEED,
    "retinanet.fpn_channels": _CHANNELS,
    "retinanet.base_anchor_px": (lambda v: isinstance(v, (tuple, list)) and len(v) > 0
                                 and all(_is_number(a) and a > 0 for a in v), "one or more sizes > 0 in pixels"),
    "retinanet.atss_candidates": _at_least(1),
    "retinanet.sampler_anchors_per_image": _at_least(1),
    "retinanet.sampler_positive_fraction": (lambda v: _is_number(v) and 0 < v < 1, "a fraction in (0, 1)"),
    "retinanet.score_threshold": (lambda v: _is_number(v) and 0 <= v < 1, "a score in [0, 1)"),
    "retinanet.nms_iou": (lambda v: _is_number(v) and 0 < v <= 1, "an IoU in (0, 1]"),
    "retinanet.detections_per_slice": _at_least(1),
    "table3.epochs": _at_least(0),
    "table3.score_threshold": _SCORE,
    "harvest.min_new_lesions": _at_least(0),
    "harvest.precision": (lambda v: _is_number(v) and 0 < v <= 1, "a precision in (0, 1]"),
    "harvest.verify_iou": _number_between(0, 1, "an IoU", open_low=True),
    "harvest.hard_min_objectness": _SCORE,
    "harvest.hard_top_per_volume": _at_least(0),
    "harvest.calibration_volumes": _at_least(0),
    "harvest.variant_epochs": _at_least(0),
    "harvest.calibration_marks": (lambda v: _is_number(v) and 0 <= v <= 0.5, "a share of V_H in [0, 0.5]"),
    "harvest.fusion_exponents": (
        lambda v: isinstance(v, (tuple, list)) and len(v) > 0 and all(_is_number(w) and w >= 0 for w in v),
        "one or more exponents >= 0 (1.0 is the paper's s_g * s_c)"),
    # rounds 2+ train the LPG with these (lpg_train.epochs, iters_per_epoch and lr times the factor)
    "harvest.finetune_epochs": _at_least(1),
    "harvest.finetune_iters_per_epoch": _at_least(1),
    "harvest.finetune_lr_factor": _POSITIVE,
}
# Checked when a configuration is read (YAML, checkpoints, --set) but not when a section is built in
# code: harvest/rounds.py fingerprints a harvest's settings with rounds=0 (the number of rounds may
# grow when a harvest is continued), as the fingerprints of existing runs were taken.
_LOAD_RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "harvest.rounds": _at_least(1),
}


def _join(*keys: str) -> str:
    return ".".join(k for k in keys if k)


def _at(where: str, key: str) -> str:
    return f"{where}: {key}" if key else where


def _show(value) -> str:
    """A value as a user wrote it in YAML (lists for tuples, null, true/false)."""
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


@functools.cache
def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


@functools.cache
def _section_classes() -> dict[str, type]:
    """The sections of a preset: name (``lpg_train``) -> dataclass (``LPGTrainConfig``)."""
    hints = _hints(Preset)
    return {f.name: hints[f.name] for f in dataclasses.fields(Preset) if dataclasses.is_dataclass(hints[f.name])}


def _section_name(cls) -> str:
    return next((name for name, c in _section_classes().items() if c is cls), cls.__name__)


def _hint_problem(value, hint) -> str | None:
    """What is wrong with ``value`` for type hint ``hint`` as far as a conversion cannot tell: a choice
    that is not one of the ``Literal``'s values, a float that is NaN or infinite, a tuple of the wrong
    length."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        allowed = typing.get_args(hint)
        if not any(type(value) is type(a) and value == a for a in allowed):
            return f"{_show(value)} is not one of {', '.join(repr(a) for a in allowed)}"
    elif origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is not None and options:
            return _hint_problem(value, options[0])
    elif origin is tuple and isinstance(value, (tuple, list)):
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            args = (args[0],) * len(value)
        elif len(value) != len(args):
            return f"expected a list of {len(args)} values, got {_show(value)}"
        for item, item_hint in zip(value, args):
            problem = _hint_problem(item, item_hint)
            if problem is not None:
                return f"{problem} (in {_show(value)})"
    elif hint is float and isinstance(value, float) and not math.isfinite(value):
        return f"expected a finite number, got {_show(value)}"
    return None


def _holds(test: Callable[[Any], bool], value) -> bool:
    try:
        return bool(test(value))
    except (TypeError, ValueError):
        return False


def check_settings(obj, at_load: bool = False) -> tuple[str, str] | None:
    """The first invalid setting of a section dataclass as ``(key, problem)``, or None.

    The one place where settings are checked (every section runs it as it is built, so also after
    ``dataclasses.replace``): driven by the type hints (a ``Literal`` field must hold one of its
    values, a float must be finite, a ``tuple[float, float]`` must have two items) and by the numeric
    ranges of ``_RANGES`` (and, with ``at_load``, of ``_LOAD_RANGES``).
    """
    section = _section_name(type(obj))
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        problem = _hint_problem(value, hints[f.name])
        rule = _RANGES.get(f"{section}.{f.name}") or (_LOAD_RANGES.get(f"{section}.{f.name}") if at_load else None)
        if problem is None and rule is not None and not _holds(rule[0], value):
            problem = f"expected {rule[1]}, got {_show(value)}"
        if problem is not None:
            return f.name, problem
    return None


def choice_fields() -> dict[str, tuple]:
    """Every choice setting of a preset, ``"section.key"`` -> its allowed values (from the
    ``Literal`` type hints); for help texts and argparse ``choices``."""
    out = {}
    for section, cls in _section_classes().items():
        for key, hint in _hints(cls).items():
            if typing.get_origin(hint) is Literal:
                out[f"{section}.{key}"] = typing.get_args(hint)
    return out


# --- reading -------------------------------------------------------------------------------------


_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _convert(value, annotation, where: str, key: str):
    at = _at(where, key)
    origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation):
        return from_dict(annotation, value, where, key)
    if origin is Literal:  # checked with the other choices as the dataclass is built
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{at}: expected a list, got {_show(value)}")
        args = typing.get_args(annotation)
        item_type = args[0] if args else float
        return tuple(_convert(v, item_type, where, key) for v in value)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None:
            return None
        return _convert(value, options[0], where, key)
    if annotation is float:
        if isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value.strip()):
            return float(value)  # PyYAML reads 1e-4 (no dot) as text
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{at}: expected a number, got {_show(value)}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{at}: expected an integer, got {_show(value)}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{at}: expected true or false, got {_show(value)}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{at}: expected a string, got {_show(value)}")
        return value
    return value


def from_dict(cls, data: dict | None, where: str = "config", key: str = ""):
    """Build dataclass ``cls`` from a dict, rejecting unknown keys, wrong types, choices that are not
    among their values and numbers out of their range (:func:`check_settings`).

    Errors are one line, ``"{where}: {key}: {problem}"``: ``where`` names the file (or preset),
    ``key`` is the dotted path of the setting below it (``key``, if given, is that of ``cls``).
    """
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{_at(where, key)}: expected a mapping, got {type(data).__name__}")
    hints = _hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known, key=str)
    if unknown:
        raise ConfigError(f"{_at(where, key)}: unknown key(s) {unknown}; known keys: {sorted(known)}")
    kwargs = {k: _convert(v, hints[k], where, _join(key, k)) for k, v in data.items()}
    try:
        obj = cls(**kwargs)
        problem = check_settings(obj, at_load=True) if isinstance(obj, _Checked) else None
    except InvalidSetting as exc:
        problem = (exc.key, exc.problem)
    if problem is not None:
        raise ConfigError(f"{_at(where, _join(key, problem[0]))}: {problem[1]}") from None
    return obj


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def _read_layer(ref: str, folder: Path | None, referrer: str | None) -> tuple[str, str, dict, Path | None]:
    """(identity, where, data, folder) of the preset ``ref``: a built-in name or a YAML path, relative
    to ``folder`` (that of the file naming it as its base) unless absolute."""
    if ref in PRESETS:
        where = f"preset '{ref}'"
        identity, home = where, None
        text = resources.files("lesion_harvester.configs").joinpath(f"{ref}.yaml").read_text()
    else:
        path = Path(ref)
        if folder is not None and not path.is_absolute():
            path = folder / path
        if not path.is_file():
            looked = f" ({path})" if str(path) != ref else ""
            raise ConfigError(f"{referrer + ': base: ' if referrer else ''}{ref}: no such preset or file{looked}; "
                              f"presets are {', '.join(PRESETS)}")
        where, identity, home = str(path), str(path.resolve()), path.parent
        text = path.read_text()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: invalid YAML ({_one_line(exc)})") from None
    if data is None or data == {}:
        if ref in PRESETS:
            data = {}
        else:  # it would silently mean the paper's full-size settings
            raise ConfigError(f"{where}: empty preset; {_START_FROM}")
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of sections ({', '.join(_section_classes())}), "
                          f"got a {type(data).__name__}")
    return identity, where, data, home


def _merge(base: dict, own: dict) -> dict:
    """``own`` over ``base``, mapping by mapping (lists and other values replace; an empty section
    changes nothing)."""
    out = dict(base)
    for k, v in own.items():
        if isinstance(out.get(k), dict) and isinstance(v, dict):
            out[k] = _merge(out[k], v)
        elif not (isinstance(out.get(k), dict) and v is None):
            out[k] = v
    return out


_START_FROM = (f"start it with the preset it changes (base: {' | '.join(PRESETS)}; paper's settings are the "
               "defaults) and give only the settings to change, or give every setting (as a run's config.yaml does)")


def _check_complete(data: dict, where: str, ref: str) -> None:
    """A YAML preset without a base must give every setting: a missing section or key would silently
    take the paper's full-size default (8 epochs of 2,000 iterations at 512 px). Built-in presets
    start from the defaults on purpose."""
    if ref in PRESETS:
        return
    missing = []
    for section, cls in _section_classes().items():
        given = data.get(section) or {}
        missing += [f"{section}.{f.name}" for f in dataclasses.fields(cls) if f.name not in given]
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise ConfigError(f"{where}: names no base and leaves {shown} unset; {_START_FROM}")


def _read_preset(name_or_path: str) -> tuple[dict, str]:
    """The settings of a preset with its ``base:`` chain merged in, and where it is (for errors)."""
    identities: list[str] = []
    wheres: list[str] = []
    layers: list[dict] = []
    ref, folder, referrer = name_or_path, None, None
    while True:
        identity, where, data, home = _read_layer(ref, folder, referrer)
        if identity in identities:
            cycle = " -> ".join([*wheres[identities.index(identity):], where])
            raise ConfigError(f"{wheres[0]}: base: the presets name each other as base ({cycle})")
        identities.append(identity)
        wheres.append(where)
        base = data.pop("base", None)
        data.setdefault("name", Path(ref).stem)  # the result's name is the first file's
        layers.append(data)
        if base is None:
            break
        if not isinstance(base, str) or not base.strip():
            raise ConfigError(f"{where}: base: expected a preset ({', '.join(PRESETS)}) or the path of a YAML "
                              f"file, got {_show(base)}")
        ref, folder, referrer = base.strip(), home, where
    merged: dict = {}
    for layer, where in zip(reversed(layers), reversed(wheres)):
        merged = _merge(merged, layer)
        # checked as merged so far, from the base up, so that an error names the file that brings it in;
        # settings that must agree (synth.harvest_test <= synth.harvest) are judged with their base's values
        from_dict(Preset, merged, where)
    _check_complete(layers[-1], wheres[-1], ref)
    return merged, wheres[0]


def load_preset(name_or_path: str | Path, overrides: Iterable[str] = ()) -> Preset:
    """Load a built-in preset by name, or a YAML file by path, then apply ``overrides``
    (``section.key=value`` each, see :func:`apply_overrides`).

    A YAML file may start from another preset: ``base: bench`` (a built-in name) or ``base: ../x.yaml``
    (a path, relative to the file's folder); its own sections then change the base's settings key by
    key (lists replace), a base may have a base, and the result is named after the file itself. A
    file without a base gives every setting.
    """
    data, where = _read_preset(str(name_or_path))
    return apply_overrides(from_dict(Preset, data, where), overrides)


def apply_overrides(preset: Preset, overrides: Iterable[str]) -> Preset:
    """``preset`` with single settings changed, each given as ``section.key=value``.

    On the command line::

        lesion-harvester harvest DATA --out RUN --preset bench \\
            --set lpg_train.iters_per_epoch=600 --set harvest.fusion_exponents=[1.0,0.5] \\
            --set lpg_train.soft_negative_above=null --set lpg_train.hflip=false

    The value is read as YAML (``600``, ``0.002``, ``[1.0, 0.5]``, ``true``, ``null``, ``adamw``) and
    checked exactly as in a preset file: an unknown section or key, a wrong type, a choice not among
    its values or a number out of range is a one-line :class:`ConfigError`. Later overrides win.
    """
    if isinstance(overrides, str):
        overrides = [overrides]
    sections = _section_classes()
    for text in overrides:
        target, eq, raw = text.partition("=")
        section, dot, key = target.strip().partition(".")
        if not eq or not dot or not section or not key:
            raise ConfigError(f"--set {text}: expected section.key=value, e.g. --set lpg_train.iters_per_epoch=600")
        if section not in sections:
            raise ConfigError(f"--set {text}: unknown section '{section}'; known sections: {', '.join(sections)}")
        cls = sections[section]
        known = [f.name for f in dataclasses.fields(cls)]
        if key not in known:
            raise ConfigError(f"--set {text}: unknown key '{key}' in {section}; known keys: {', '.join(known)}")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {text}: invalid YAML value ({_one_line(exc)})") from None
        current = getattr(preset, section)
        data = to_dict(current) if current is not None else {}
        data[key] = value
        preset = dataclasses.replace(preset, **{section: from_dict(cls, data, "--set", section)})
    return preset


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


def fingerprint(*parts, digits: int = 16) -> str:
    """Hex digits naming ``parts``: JSON-able values, settings dataclasses by their non-default settings.

    The one mechanism by which a resumable job recognises its own earlier work (a harvest's ledger,
    an LPG's ``last.pt``, a scan's partial folder) and the prepared-volume cache its folder.
    """
    plain = [non_default(p) if dataclasses.is_dataclass(p) else p for p in parts]
    return hashlib.sha1(json.dumps(plain, default=str, sort_keys=True).encode()).hexdigest()[:digits]


def settings_fingerprint(preset, *extra) -> str:
    """16 hex digits naming a preset's (or any settings dataclass's) non-default settings plus ``extra``."""
    return fingerprint(preset, *extra)
