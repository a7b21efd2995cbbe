"""Configuration: YAML presets read into frozen dataclasses, one section per pipeline stage, each
setting's rule (its range or choices) declared on the field itself.

A preset is ``tiny`` (tests), ``demo`` (the quick CPU path), ``bench`` (the CPU accuracy claims)
or ``paper`` (the paper's GPU configuration), or the path of a YAML file. A YAML preset starts from
another (``base: bench``, or a path relative to the file) and changes only some settings, or gives
every setting (as the ``config.yaml`` of a run does): a file without a base that leaves a setting
out, or an empty file, is an error, since it would silently mean the paper's full-size settings.
Single settings can also be changed on the command line (``--set lpg_train.iters_per_epoch=600``,
:func:`apply_overrides`).

Every setting is checked when the configuration is built, however it is built (YAML, keyword
arguments, ``dataclasses.replace``): unknown keys are rejected with the list of known ones, a choice
(a ``Literal`` field) with its allowed values, a number out of range with the range (the
``Annotated`` rule of its field), each as one line naming the key (:func:`check_settings`), so a
typo ends the run before any work. Every run writes the resolved configuration next to its outputs
(:func:`dump_config`). The whole LPG's size is bounded where a model is built, by counting the
model itself (:func:`lesion_harvester.lpg.model.check_size`).

How rules are checked, files layered and runs fingerprinted lives in :mod:`lesion_harvester.settings`;
this module declares the pipeline's settings and is where callers import all of it from. (No
``from __future__ import annotations`` here: a rule's test may be a lambda, which a postponed
annotation would evaluate without this module's names.)
"""

import dataclasses
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Literal

from lesion_harvester.errors import ConfigError
from lesion_harvester.settings.files import PresetFiles, apply_overrides, dump_config
from lesion_harvester.settings.fingerprint import fingerprint, non_default, settings_fingerprint
from lesion_harvester.settings.schema import (
    InvalidSetting,
    Rule,
    at_least,
    check_settings,
    each,
    field_rules,
    from_dict,
    int_between,
    is_int,
    is_number,
    number_between,
    ordered_pair,
    plain_hints,
    sections,
    show,
    to_dict,
    when_read,
)

__all__ = [
    "MAX_MSCN_PARAMETERS", "PRESETS", "AmpDtype", "BackgroundVolumes", "ContextMode", "FusionChoice", "HarvestConfig",
    "InvalidSetting", "KeptEpoch", "LPCConfig", "LPCPretraining", "LPCVariant", "LPGTrainConfig", "LRSchedule",
    "MSCNConfig", "NegativeSampling", "NumSlices", "Optimizer", "OutputStride", "PreprocessConfig", "Preset",
    "ResNetDepth",
    "RetinaNetConfig", "ScanConfig", "StackConfig", "SynthConfig", "Table3Config", "ThresholdRule",
    "apply_overrides", "check_settings", "choice_fields", "dump_config", "fingerprint", "from_dict", "load_preset",
    "non_default", "settings_fingerprint", "to_dict",
]

PRESETS = ("tiny", "demo", "bench", "paper")
# The largest LPG a configuration may describe: 14x the paper's 7.1 million parameters, 400 MB of
# float32 weights (more is a typo or a hostile checkpoint, not a model this pipeline trains).
# Checked by lpg.model on the model itself, laid out on the meta device
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
LPCPretraining = Literal["none", "lpg_scores"]
ThresholdRule = Literal["vm", "marks", "combined", "fp_rate", "vm_and_fp_rate"]
AmpDtype = Literal["float16", "bfloat16"]
FusionChoice = Literal["admitted", "ap"]
KeptEpoch = Literal["validation", "last"]
ResNetDepth = Literal[10, 18, 34]


def _is_window(v) -> bool:
    return isinstance(v, (tuple, list)) and len(v) == 2 and all(map(is_number, v)) and v[0] < v[1]


# The ranges many settings share, as types. Every numeric setting has a rule: sizes and counts
# positive, rates finite and positive, fractions in [0, 1], ranges and windows ordered
PositiveInt = Annotated[int, at_least(1)]
NonNegativeInt = Annotated[int, at_least(0)]
Workers = Annotated[int, at_least(0)]  # 0: in the calling process
Seed = Annotated[int, at_least(0)]  # numpy refuses negative seeds
PositiveFloat = Annotated[float, Rule(lambda v: is_number(v) and v > 0, "a number > 0")]
NonNegativeFloat = Annotated[float, Rule(lambda v: is_number(v) and v >= 0, "a number >= 0")]
Score = Annotated[float, number_between(0, 1, "a score")]
IoU = Annotated[float, number_between(0, 1, "an IoU")]
Share = Annotated[float, number_between(0, 1, "a share")]
# a size of a network, bounded so that no setting can ask for terabytes before a model is built
# (as sizes multiply, lpg.model also bounds the whole LPG's parameter count)
Channels = Annotated[int, int_between(1, 4096, "a channel count")]
HUWindow = Annotated[tuple[float, float], Rule(_is_window, "[low, high] in HU with low < high")]


class _Checked:
    """Base of the section dataclasses: every instance is checked as it is built (also by
    ``dataclasses.replace``), see :func:`check_settings`."""

    __slots__ = ()

    def __post_init__(self) -> None:
        problem = check_settings(self)
        if problem is not None:
            raise InvalidSetting(_section_name(type(self)), *problem)


@dataclass(frozen=True)
class SynthConfig(_Checked):
    """Synthetic CT benchmark (``lesion-harvester synth``).

    Lesion statistics (size, count, marked fraction) are fixed in ``synth/lesions.py`` and
    ``synth/dataset.py``; a preset changes only resolution, volume counts and slice intervals.
    """

    image_size_px: Annotated[int, int_between(16, 4096, "a size in pixels")] = 512
    pixel_mm: Annotated[tuple[float, float], ordered_pair(
        0, "[low, high] pixel sizes in mm with 0 < low <= high", strict=True)] = (0.65, 0.95)
    slice_intervals_mm: Annotated[tuple[float, ...], each(
        lambda v: is_number(v) and v > 0, "one or more slice intervals > 0 in mm")] = (1.0, 1.25, 2.0, 2.5, 3.0, 5.0)
    slice_interval_weights: Annotated[tuple[float, ...], each(
        lambda v: is_number(v) and v >= 0, "one or more weights >= 0")] = (0.12, 0.08, 0.2, 0.15, 0.1, 0.35)
    half_extent_mm: Annotated[tuple[float, float], ordered_pair(
        0, "[low, high] in mm with 0 < low <= high", strict=True)] = (30.0, 45.0)
    max_lesions: PositiveInt = 30
    noise_hu: Annotated[tuple[float, float], ordered_pair(0, "[low, high] in HU with 0 <= low <= high")] = (10.0, 22.0)
    # volume counts per split; harvest_test is a subset of harvest
    fully_annotated: NonNegativeInt = 10
    harvest: NonNegativeInt = 190
    harvest_test: NonNegativeInt = 40
    validation: NonNegativeInt = 12
    detection_test: NonNegativeInt = 45
    workers: PositiveInt = 2
    png_compress_level: Annotated[int, int_between(0, 9, "a zlib level")] = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        weights = self.slice_interval_weights
        if len(weights) != len(self.slice_intervals_mm) or sum(weights) <= 0:
            raise InvalidSetting("synth", "slice_interval_weights", "expected one weight per slice interval "
                                 f"({len(self.slice_intervals_mm)}), not all 0, got {show(weights)}")
        if self.harvest_test > self.harvest:
            raise InvalidSetting("synth", "harvest_test", f"expected at most synth.harvest ({self.harvest}) volumes "
                                 f"(V_H^test is a part of V_H), got {self.harvest_test}")
        if self.total_volumes < 1:
            raise InvalidSetting("synth", "harvest", "the split counts add up to no volume at all")

    @property
    def total_volumes(self) -> int:
        return self.fully_annotated + self.harvest + self.validation + self.detection_test

    def with_total(self, total: int) -> "SynthConfig":
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

    spacing_mm: PositiveFloat = 0.8
    max_size_px: Annotated[int, int_between(16, 8192, "a size in pixels")] = 512
    context_mm: PositiveFloat = 2.0
    # "exact": context slices every context_mm (MULAN); "shared": triplet centres rounded to whole
    # slices so that a scan computes each triplet once (geometry.preprocess.context_offsets)
    context_mode: ContextMode = "exact"
    # the LPG's input window; prepared volumes are stored with MULAN's whatever this is
    window_hu: HUWindow = (-1024.0, 3071.0)
    pixel_mean: float = 50.0  # any finite value (as body_threshold_hu): checked finite by its type
    body_threshold_hu: float = -768.0

    def fingerprint(self) -> str:
        """Identifies the prepared-volume cache (neither the context nor the input window changes
        prepared volumes; their stored encoding, MULAN's window and mean, is part of the key)."""
        # imported here: geometry.preprocess loads torch, which reading a preset does not need
        from lesion_harvester.geometry.preprocess import PIXEL_MEAN as STORED_PIXEL_MEAN
        from lesion_harvester.geometry.preprocess import WINDOW_HU as STORED_WINDOW_HU

        # 10 digits: the folder names of caches made before fingerprints had one function
        return fingerprint(self.spacing_mm, self.max_size_px, list(STORED_WINDOW_HU), STORED_PIXEL_MEAN,
                           self.body_threshold_hu, digits=10)


@dataclass(frozen=True)
class MSCNConfig(_Checked):
    """Architecture of the multi-slice CenterNet. The defaults are the paper's: DenseNet-121
    (init 64, growth 32, blocks 6/12/24, truncated after block 3), 9 slices, a 512-channel neck.
    Each size has its range here; their product, the whole model's size, is bounded where a model
    is built (:func:`lesion_harvester.lpg.model.check_size`)."""

    num_slices: NumSlices = 9  # 9: MSCN with 3D context fusion; 3: the plain CenterNet of Table III
    init_features: Channels = 64
    growth_rate: Annotated[int, int_between(1, 512, "a channel count")] = 32
    block_config: Annotated[tuple[int, ...], Rule(
        lambda v: isinstance(v, (tuple, list)) and len(v) == 3 and all(is_int(n) and 1 <= n <= 128 for n in v),
        "3 dense blocks of 1 to 128 layers (the backbone ends after block 3)")] = (6, 12, 24)
    bn_size: Annotated[int, int_between(1, 16)] = 4
    neck_channels: Channels = 512
    head_channels: Channels = 64
    # 4: CenterNet's heads at a quarter of the input; 2: one more top-down step, onto the stem's
    # stride-2 map, for lesions only a few pixels wide (more head compute, finer centres and sizes)
    output_stride: OutputStride = 4
    pretrained_path: str | None = None  # a local torchvision DenseNet-121 state dict (ImageNet)


@dataclass(frozen=True)
class LPGTrainConfig(_Checked):
    """LPG training: crops (or whole slices), augmentation, optimiser and schedule."""

    # 0: whole slices, as MULAN; else square crops around objects and background (a multiple of 16,
    # the network's coarsest stride)
    crop_px: Annotated[int, Rule(lambda v: is_int(v) and v >= 0 and v % 16 == 0 and v <= 4096,
                                 "0 (whole slices) or a multiple of 16 up to 4096 pixels")] = 0
    background_fraction: Share = 0.3  # share of crops drawn at random positions
    # where random background crops come from: "all" training volumes, or only the "fully_annotated"
    # ones (V_M, complete labels; all volumes when there are none)
    background_volumes: BackgroundVolumes = "all"
    scale_jitter: Annotated[tuple[float, float], ordered_pair(
        0, "[low, high] scale factors with 0 < low <= high", strict=True)] = (0.8, 1.2)
    hflip: bool = False
    rotate90: bool = False  # random transposes and flips (the 8 symmetries of the square); crops only
    # contrast x U(1 - j, 1 + j) and a shift of up to j * 50 HU
    intensity_jitter: Annotated[float, number_between(0, 1, "a fraction", open_high=True)] = 0.0
    noise_hu: NonNegativeFloat = 0.0  # added Gaussian noise, standard deviation up to this many HU
    max_objects: PositiveInt = 32
    # in crops from partially labelled volumes, background where the LPG already scores above this
    # is not taught as background (it may be an unmarked lesion); None: every background pixel is
    soft_negative_above: Annotated[float | None, Rule(lambda v: v is None or (is_number(v) and 0 < v < 1),
                                                      "a score between 0 and 1 (both excluded) or null")] = None
    # hard background: after each epoch, the model's false positives on the fully annotated volumes
    # (complete labels, so these are true negatives) become centres of background crops
    mine_hard_background: bool = False
    mined_fraction: Share = 0.5  # share of background crops centred on mined false positives
    mine_min_score: Score = 0.2
    mine_per_slice: PositiveInt = 3
    batch_size: PositiveInt = 8
    epochs: PositiveInt = 8
    iters_per_epoch: PositiveInt = 2000
    optimizer: Optimizer = "sgd"  # sgd (MULAN) or adamw
    lr: PositiveFloat = 0.004
    momentum: Annotated[float, number_between(0, 1, open_high=True)] = 0.9
    weight_decay: NonNegativeFloat = 5e-4
    lr_schedule: LRSchedule = "step"  # step (x0.1 at lr_steps epochs) or cosine
    lr_steps: Annotated[tuple[int, ...], Rule(
        lambda v: isinstance(v, (tuple, list)) and all(is_int(n) and n >= 1 for n in v) and list(v) == sorted(set(v)),
        "ascending epochs >= 1 (or an empty list)")] = (4, 6)
    warmup_iters: NonNegativeInt = 200
    grad_clip: PositiveFloat = 10.0
    # which epoch best.pt keeps: the one with the best validation score, or the last (the converged
    # model of a cosine schedule), for a validation set too small to choose on: on demo seed 1 the 4
    # validation volumes chose epoch 2 of 6, whose AP on V_H^test is 0.256 against the last's 0.327
    keep_epoch: KeptEpoch = "validation"
    amp: bool = True  # mixed precision, CUDA only
    amp_dtype: AmpDtype = "float16"  # bfloat16: no loss scaling needed (Ampere and later GPUs)
    loader_workers: Workers = 1  # processes preparing batches (0: in the training process)
    seed: Seed = 0


@dataclass(frozen=True)
class ScanConfig(_Checked):
    """Whole-volume scanning with the LPG."""

    batch_slices: PositiveInt = 8
    # processes preparing the next volumes (reading, resampling, caching) while the LPG scans;
    # 0: one background thread
    loader_workers: Workers = 0
    top_k: PositiveInt = 100
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

    score_threshold: Score = 0.1  # t_G
    link_iou: IoU = 0.8
    fuse_iou: IoU = 0.8


@dataclass(frozen=True)
class LPCConfig(_Checked):
    """Lesion proposal classifier (paper Sec. III-D): one ResNet-18 per view on patches around each
    proposal (its extent padded by 64 px), features concatenated, one linear layer."""

    variant: LPCVariant = "multiview"  # multiview (axial, coronal, sagittal), axial (2D), or 3d (3D ResNet-18)
    # samples per side of each view (a cube for 3d)
    patch_px: Annotated[int, int_between(8, 1024, "a size in pixels")] = 64
    pad_px: NonNegativeFloat = 64.0  # padding of the lesion extent, in original pixels
    # 0: off. Else a second patch per view with this padding, as extra channels: on a coarse CPU grid
    # the 64 px context leaves a 10 px lesion only a few samples wide
    close_up_pad_px: NonNegativeFloat = 0.0
    windows_hu: Annotated[tuple[tuple[float, float], ...], each(
        _is_window, "one or more [low, high] windows in HU with low < high")] = (
        (-1350.0, 150.0), (-175.0, 275.0), (-450.0, 1050.0))
    # ResNet-18 channel width (1.0 = the standard ResNet-18)
    widen_factor: Annotated[float, number_between(0, 16, "a width factor", open_low=True)] = 1.0
    pretrained_path: str | None = None  # a local torchvision ResNet-18 state dict (2D variants)
    epochs: PositiveInt = 12
    batch_size: PositiveInt = 32
    lr: PositiveFloat = 0.001
    weight_decay: NonNegativeFloat = 0.0001
    folds: PositiveInt = 2  # V_M is scored out of fold, so the 95%-precision threshold is not fit on training data
    min_objectness: Score = 0.1  # proposals below this s_g are not classified (s_c = 0)
    # with fewer verified proposals than this (a weak early LPG), the known lesion boxes themselves
    # (marks and complete labels, as one-slice proposals) join the positives
    min_positives: NonNegativeInt = 20
    loader_workers: Workers = 0  # processes cutting the proposals' patches, one volume each (0: in this process)
    max_per_volume: PositiveInt = 50  # at most this many proposals (by s_g) per volume are classified
    # how a batch's negatives are drawn: "uniform", or "matched" to the positives' joint distribution of
    # s_g and size (the negatives are mostly small, low-s_g proposals, the positives mostly large marked
    # lesions: matched, the LPC cannot rank by those two alone, which the LPG already does)
    negatives: NegativeSampling = "uniform"
    # "lpg_scores": before it sees V_M, the LPC learns the LPG's s_g on V_H's own proposals (this domain's
    # images, no label and no download), and every fold starts from that; "none": from scratch
    pretrain: LPCPretraining = "none"
    pretrain_epochs: PositiveInt = 4
    pretrain_per_volume: PositiveInt = 20  # the V_H proposals (top by s_g) of each volume it learns from
    # V_H proposals as negatives too: at most this many per volume, drawn at random among those with
    # min_objectness <= s_g < vh_negatives_below touching no known lesion (0: none, the paper's LPC).
    # The paper's negatives all come from V_M's few patients and most positives from V_H's marks, so an
    # LPC can learn a V_H patient's look as "lesion" (benchmarks/RESULTS.md, issue 34)
    vh_negatives_per_volume: NonNegativeInt = 0
    vh_negatives_below: Score = 0.5
    seed: Seed = 0


@dataclass(frozen=True)
class RetinaNetConfig(_Checked):
    """The peer detector of Table III (peers/retinanet.py): MONAI's RetinaNet on 3 adjacent slices
    as channels, trained with the LPG's crops, augmentation and schedule (``lpg_train``). The
    defaults follow MONAI's LUNA16 detection tutorial where it applies (ATSS matching, hard-negative
    sampling, BCE and smooth-L1 losses)."""

    resnet_depth: ResNetDepth = 18  # MONAI's ResNet trunk, up to layer 3 (strides 4, 8, 16)
    fpn_channels: Channels = 64
    # square anchors (px of the network input) at the stride-4 level, doubled at each coarser level
    # (strides 8, 16 and the max-pooled 32), for lesions of a few to about 200 pixels
    base_anchor_px: Annotated[tuple[float, ...], each(
        lambda a: is_number(a) and a > 0, "one or more sizes > 0 in pixels")] = (6.0, 10.0, 16.0)
    atss_candidates: PositiveInt = 4  # ATSS matcher: candidate anchors per level and lesion
    # hard-negative sampler: anchors per image in the classification loss
    sampler_anchors_per_image: PositiveInt = 64
    sampler_positive_fraction: Annotated[float, number_between(0, 1, "a fraction", open_low=True,
                                                               open_high=True)] = 0.3
    # 2D detections kept per slice above this
    score_threshold: Annotated[float, number_between(0, 1, "a score", open_high=True)] = 0.02
    nms_iou: Annotated[float, number_between(0, 1, "an IoU", open_low=True)] = 0.22
    detections_per_slice: PositiveInt = 100


@dataclass(frozen=True)
class Table3Config(_Checked):
    """Detectors trained on a harvest's label sets (peers/table3.py, the paper's Table III): every row
    trains with ``lpg_train``'s crops, augmentation and schedule, except what is set here."""

    epochs: NonNegativeInt = 0  # each row's training epochs (0: lpg_train.epochs, the LPG's own)
    # the 2D detections each row keeps for stacking when it scans the test split: low, because the
    # HNSL compresses scores and a lesion slice under the cut is never stacked
    score_threshold: Score = 0.05


@dataclass(frozen=True)
class HarvestConfig(_Checked):
    """Harvest rounds (paper Sec. III-D, III-E)."""

    # checked when read (YAML, checkpoints, --set) but not when built in code: harvest/rounds.py
    # fingerprints a harvest's settings with rounds=0 (the number of rounds may grow when a harvest
    # is continued), as the fingerprints of existing runs were taken
    rounds: Annotated[int, when_read(at_least(1))] = 3
    min_new_lesions: NonNegativeInt = 1  # stop early when a round adds fewer new lesions than this
    # the threshold keeps this precision on the fully annotated volumes
    precision: Annotated[float, number_between(0, 1, "a precision", open_low=True)] = 0.95
    # P3D IoU for a proposal to cover a mark
    verify_iou: Annotated[float, number_between(0, 1, "an IoU", open_low=True)] = 0.5
    # hard negatives (Sec. III-D): of the proposals under the threshold, those with s_g >= this...
    hard_min_objectness: Score = 0.5
    hard_top_per_volume: NonNegativeInt = 5  # ...at most this many per volume (the highest s_g); none on a known lesion
    # beyond the paper (1.0 and 0: off): only those whose LPC probability s_c is at most this, and that
    # span at most this many slices; the s_g >= 0.5 leftovers are often unmarked lesions, the one-slice
    # ones the LPC rejects rarely (harvest/mine.py select_hard_negatives)
    hard_max_lpc: Score = 1.0
    hard_max_slices: NonNegativeInt = 0
    # lesion score s_g * s_c**w, w chosen per round among these as the one whose 95%-precision
    # threshold admits the most V_M lesions; (1.0,) is the paper's s_g * s_c
    fusion_exponents: Annotated[tuple[float, ...], each(
        lambda w: is_number(w) and w >= 0, "one or more exponents >= 0 (1.0 is the paper's s_g * s_c)")] = (1.0,)
    # how w is chosen on V_M: "admitted" (the most V_M lesions above the threshold) or "ap" (the best
    # AP of V_M's whole out-of-fold ranking among the w whose threshold admits a lesion; varies less on
    # a small V_M)
    fusion_choice: FusionChoice = "admitted"
    # rounds 2+: LPG fine-tuning from the previous round's checkpoint, with lpg_train's settings
    # except these (its lr times the factor)
    finetune_epochs: PositiveInt = 2
    finetune_iters_per_epoch: PositiveInt = 500
    finetune_lr_factor: PositiveFloat = 0.5
    lpc_variants: bool = True  # round 1: also train the axial and 3D LPCs (the paper's Fig. 5b)
    # V_M volumes kept out of all LPG training (for the LPG they are harvest volumes: their original
    # marks only) and on which alone the threshold and the fusion exponent are set; 0: all of V_M
    # does both, as in the paper. Why: the LPG's hard-background mining and its training on V_M's
    # complete labels suppress exactly V_M's highest-scored false positives, so V_M looks cleaner
    # than V_H at the scores where the threshold falls.
    calibration_volumes: NonNegativeInt = 0
    variant_epochs: NonNegativeInt = 0  # epochs of those comparison LPCs (0: as lpc.epochs)
    # how the threshold's precision is estimated (harvest/precision.py): "vm" counts on V_M alone (the
    # paper); "marks" estimates it from the RECIST marks of calibration volumes of V_H (positive-
    # unlabeled, corrected for lesion size with V_M's marked share); "combined" pools both; "fp_rate"
    # subtracts from V_H's count of new proposals the false positives V_M's rate per volume predicts;
    # "vm_and_fp_rate" needs both "vm" and "fp_rate" to reach the precision (the higher threshold)
    threshold: ThresholdRule = "vm"
    # share of V_H volumes (never V_H^test) whose marks no LPG or LPC trains on, so that the marks
    # can tell how often the harvest finds a lesion; needed by threshold "marks" and "combined" and
    # reported whenever > 0
    calibration_marks: Annotated[float, number_between(0, 0.5, "a share of V_H")] = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.threshold in ("marks", "combined") and self.calibration_marks <= 0:
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


_FILES = PresetFiles(Preset, PRESETS, "lesion_harvester.configs", defaults="paper")


def load_preset(name_or_path: str | Path, overrides: Iterable[str] = ()) -> Preset:
    """Load a built-in preset by name, or a YAML file by path, then apply ``overrides``
    (``section.key=value`` each, see :func:`apply_overrides`).

    A YAML file may start from another preset: ``base: bench`` (a built-in name) or ``base: ../x.yaml``
    (a path, relative to the file's folder); its own sections then change the base's settings key by
    key (lists replace), a base may have a base, and the result is named after the file itself. A
    file without a base gives every setting.
    """
    return _FILES.load(name_or_path, overrides)


def choice_fields() -> dict[str, tuple]:
    """Every choice setting of a preset, ``"section.key"`` -> its allowed values (from the
    ``Literal`` type hints); for help texts and argparse ``choices``."""
    return {f"{section}.{key}": typing.get_args(hint) for section, cls in _section_classes().items()
            for key, hint in plain_hints(cls).items() if typing.get_origin(hint) is Literal}


def _section_classes() -> dict[str, type]:
    """The sections of a preset: name (``lpg_train``) -> dataclass (``LPGTrainConfig``)."""
    return sections(Preset)


def _section_name(cls) -> str:
    return next((name for name, c in _section_classes().items() if c is cls), cls.__name__)


def _rules_by_key(at_load: bool) -> dict[str, Rule]:
    return {f"{section}.{key}": rule for section, cls in _section_classes().items()
            for key, rules in field_rules(cls).items() for rule in rules if rule.at_load == at_load}


# The rules by "section.key", read off the fields (an index for tests and tools; the rules
# themselves are declared on the fields): those checked whenever a section is built, and those
# checked only when settings are read
_RANGES = MappingProxyType(_rules_by_key(at_load=False))
_LOAD_RANGES = MappingProxyType(_rules_by_key(at_load=True))
