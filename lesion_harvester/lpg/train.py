"""Train a detector (the LPG, or any :class:`~lesion_harvester.detectors.base.DetectionModel`): crops
(or whole slices) with MULAN-style augmentation, validation FROC each epoch. One loop for every
detector (:func:`train_detector`); :func:`train_lpg` is the LPG's, with its inputs one by one.

Outputs in CKPT_DIR: ``best.pt`` (the epoch with the best mean sensitivity at 0.5/1/2/4 FPs per
validation slice, MULAN's rule, with its operating point: the score at 0.5, 1, 2 and 4 false positives
per validation volume, measured on whole volumes once training ends), ``last.pt`` (everything needed
to resume), ``train_log.json`` and ``config.yaml``. Every file is written atomically. The folder is
locked (``CKPT_DIR/.lock``) while a training writes it, so a second training into it refuses at once.
Rerunning the same command after a kill resumes after the last finished epoch and gives the same
result as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from lesion_harvester.config import LPGTrainConfig, Preset, ScanConfig, StackConfig, dump_config
from lesion_harvester.dataset.prepared_cache import PreparedCache
from lesion_harvester.dataset.roles import resolve_partition
from lesion_harvester.detectors.base import DetectionModel
from lesion_harvester.device import resolve_device
from lesion_harvester.distributed import ALONE, Distributed
from lesion_harvester.errors import ConfigError, DataError
from lesion_harvester.evaluation.matching import VolumeTruth
from lesion_harvester.evaluation.metrics import evaluate_detections
from lesion_harvester.io.logs import log_to_file
from lesion_harvester.io.partial import file_digest
from lesion_harvester.lpg.checkpoint import (
    OPERATING_RATES,
    checkpoint_operating_point,
    checkpoint_stack,
    describe_rate,
    load_checkpoint,
    rate_key,
    save_checkpoint,
    store_operating_point,
)
from lesion_harvester.lpg.data import CropSampler, HardBackground, TrainingData, epoch_loader
from lesion_harvester.lpg.ddp import distributed_model
from lesion_harvester.lpg.model import MSCN
from lesion_harvester.lpg.scan import Scanner
from lesion_harvester.lpg.sources import build_sources
from lesion_harvester.paths import TrainLayout, cache_dir_for
from lesion_harvester.preprocessing import PreparedVolume
from lesion_harvester.storage.atomic import atomic_write_text
from lesion_harvester.storage.locks import locked_output
from lesion_harvester.structures import LabelSet, SliceBox, Tracklet

log = logging.getLogger(__name__)

VALIDATION_RATES = ("0.5", "1", "2", "4")
# an operating point is measured on tracklets stacked from 2D boxes down to this score (or t_G where
# lower), so that a rate whose score lies under t_G is still found; detect stacks the same way there
OPERATING_POINT_MIN_SCORE = 0.05


def make_optimizer(model: torch.nn.Module, cfg: LPGTrainConfig) -> torch.optim.Optimizer:
    """SGD as MULAN (biases: 2x lr, no decay) or AdamW (no decay on biases and norms)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    if cfg.optimizer == "sgd":
        groups = [{"params": decay, "weight_decay": cfg.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0, "lr": cfg.lr * 2}]
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    # "adamw" (the config admits no other choice)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr)


def lr_factor(iteration: int, cfg: LPGTrainConfig) -> float:
    """Learning-rate multiplier at a global iteration: linear warmup, then step or cosine decay."""
    total = cfg.epochs * cfg.iters_per_epoch
    warm = 1.0 if iteration >= cfg.warmup_iters else 0.1 + 0.9 * iteration / max(cfg.warmup_iters, 1)
    if cfg.lr_schedule == "step":
        epoch = iteration // cfg.iters_per_epoch
        return warm * 0.1 ** sum(epoch >= s for s in cfg.lr_steps)
    # "cosine" (the config admits no other choice)
    progress = min(iteration / max(total, 1), 1.0)
    return warm * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * progress)))


def _validation_detections(scanner: Scanner, prepared: dict[str, PreparedVolume],
                           truth: dict[str, list[SliceBox]]) -> tuple[dict, dict]:
    """Per annotated slice ("key#z"): its truth and the LPG's detections there."""
    per_slice_truth, detections = {}, {}
    for key, boxes in truth.items():
        zs = sorted({b.z_index for b in boxes})
        if not zs:
            continue
        proposals = scanner.predict(prepared[key], zs)
        for z in zs:
            name = f"{key}#{z}"
            per_slice_truth[name] = VolumeTruth.from_slice_boxes([b for b in boxes if b.z_index == z])
            p = proposals[z]
            detections[name] = [Tracklet.single_slice(z, box, float(s)) for box, s in zip(p.boxes_xyxy_px, p.scores)
                                if s > 0.01]
    return per_slice_truth, detections


def _in_order(keys: list[str], shares: list[dict]) -> dict:
    """The ranks' dicts merged, ordered by ``keys`` (the one-process order)."""
    merged = {k: v for share in shares for k, v in share.items()}
    return {k: merged[k] for k in keys if k in merged}


def validate(scanner: Scanner, prepared: dict[str, PreparedVolume], truth: dict[str, list[SliceBox]],
             dist: Distributed = ALONE) -> dict:
    """Per-slice FROC on the annotated slices of the validation volumes (as MULAN validates); the
    score is the mean sensitivity at 0.5, 1, 2 and 4 FP per slice, None without annotated slices.
    Under torchrun each rank scans its share of the volumes and every rank gets the same result."""
    mine = {k: truth[k] for k in dist.shard(list(truth))}
    per_slice_truth, detections = _validation_detections(scanner, prepared, mine)
    if dist.active:
        names = [f"{key}#{z}" for key, boxes in truth.items() for z in sorted({b.z_index for b in boxes})]
        shares = dist.gather((per_slice_truth, detections))
        per_slice_truth = _in_order(names, [t for t, _ in shares])
        detections = _in_order(names, [d for _, d in shares])
    if not per_slice_truth:
        return {"score": None, "froc_per_slice": {}, "ap": None}
    result = evaluate_detections(per_slice_truth, detections)
    score = float(np.mean([result.froc[r] for r in VALIDATION_RATES]))
    return {"score": score, "froc_per_slice": result.froc, "ap": result.ap, "n_slices": len(per_slice_truth)}


def mine_hard_background(scanner: Scanner, prepared: dict[str, PreparedVolume], truth: dict[str, list[SliceBox]],
                         data: TrainingData, min_score: float, per_slice: int,
                         dist: Distributed = ALONE) -> HardBackground:
    """The model's false positives on fully annotated volumes: detections above ``min_score`` that
    overlap no known lesion (on its slice or the slices it may extend to). Under torchrun each rank
    scans its share of the volumes and every rank gets the whole list, in the one-process order."""
    mined: dict[str, HardBackground] = {}
    for key in dist.shard(list(truth)):
        proposals = scanner.predict(prepared[key])
        mined[key] = []
        for z, p in proposals.items():
            kept = 0
            for box, score in zip(p.boxes_xyxy_px, p.scores):
                if score < min_score or kept >= per_slice:
                    break
                if data.excluded(key, z, box):
                    continue
                mined[key].append((key, z, np.asarray(box, dtype=np.float64)))
                kept += 1
    by_key = _in_order(list(truth), dist.gather(mined))
    return [location for locations in by_key.values() for location in locations]


def scores_at_fp_rates(scores: np.ndarray, fp_per_volume: np.ndarray, sensitivity: np.ndarray,
                       lowest: float, rates: tuple[float, ...] = OPERATING_RATES) -> dict[str, dict]:
    """The score threshold at each rate of false positives per volume, read off an evaluation's curve.

    Args:
        scores: (D,) detection scores in descending order (the evaluation's order).
        fp_per_volume: (D,) false positives per volume among the first d + 1 detections (non-decreasing).
        sensitivity: (D,) the share of lesions found among them.
        lowest: the lowest score a detection could have (the threshold when there is none).
    Returns:
        {rate ("0.5", "1", ...): {"score", "fp_per_volume", "sensitivity", "reached"}}: a score s whose
        detections (those scoring s or more; ties enter together) are the most that make at most ``rate``
        false positives per volume, and what they make and find; s lies halfway between the last score
        kept and the next lower one (or ``lowest``). ``reached`` is False where even every
        detection makes fewer (s is then below the lowest score measured); where the top-scoring
        detections alone make more, s lies just above the top score and keeps nothing (``keeps_none``).
    """
    n = len(scores)
    # a threshold can stop only where the score drops: detections of one score enter together
    ends = np.flatnonzero(np.r_[scores[1:] < scores[:-1], True]) if n else np.zeros(0, dtype=np.int64)
    out = {}
    for rate in rates:
        within = ends[fp_per_volume[ends] <= rate + 1e-9]
        if n == 0:
            entry = {"score": float(lowest), "fp_per_volume": 0.0, "sensitivity": 0.0, "reached": False}
        elif len(within) == 0:
            entry = {"score": float(np.nextafter(scores[0], np.inf)), "fp_per_volume": 0.0, "sensitivity": 0.0,
                     "reached": True, "keeps_none": True}
        else:
            k = int(within[-1])
            # halfway to the next lower score: the same detections pass, and a rescan whose scores drift
            # by float noise (other threads, another machine) still keeps the last one and not the next
            below = float(scores[k + 1]) if k + 1 < n else float(lowest)
            entry = {"score": (float(scores[k]) + below) / 2, "fp_per_volume": float(fp_per_volume[k]),
                     "sensitivity": float(sensitivity[k]), "reached": k < n - 1}
        out[rate_key(rate)] = entry
    return out


def operating_point(scanner: Scanner, prepare: Callable[[str], PreparedVolume], truth: dict[str, list[SliceBox]],
                    stack: StackConfig, dist: Distributed = ALONE) -> dict:
    """The LPG's score at 0.5, 1, 2 and 4 false positives per volume on whole volumes: each volume of
    ``truth`` (``prepare(key)`` gives it) scanned as ``detect`` scans, its 2D boxes stacked down to
    min(t_G, :data:`OPERATING_POINT_MIN_SCORE`), the tracklets matched to ``truth`` by P3D. Under
    torchrun each rank scans its share of the volumes and every rank gets the same result."""
    measuring = replace(stack, score_threshold=min(stack.score_threshold, OPERATING_POINT_MIN_SCORE))
    mine = {key: scanner.propose(prepare(key), measuring) for key in dist.shard(list(truth))}
    detections = _in_order(list(truth), dist.gather(mine)) if dist.active else mine
    return operating_point_of(detections, truth, measuring.score_threshold)


def operating_point_of(detections: dict[str, list[Tracklet]], truth: dict[str, list[SliceBox]],
                       stack_score_threshold: float) -> dict:
    """The operating point (:func:`scores_at_fp_rates`, P3D) of ``detections`` on every volume of
    ``truth``, whose labels must be complete (an unlabelled lesion would count as a false positive);
    the detections are tracklets stacked from 2D boxes down to ``stack_score_threshold``, which
    ``detect`` then stacks down to as well."""
    result = evaluate_detections({k: VolumeTruth.from_slice_boxes(v) for k, v in truth.items()},
                                 {k: detections.get(k, []) for k in truth})
    return {"rates": scores_at_fp_rates(result.scores, result.fp_per_volume, result.recall, stack_score_threshold),
            "metric": "p3d", "volumes": result.n_volumes, "lesions": result.n_gt,
            "stack_score_threshold": float(stack_score_threshold)}


def describe_operating_point(point: dict) -> str:
    """One line for logs: the score at each rate, and what it was measured on."""
    rates = "; ".join(describe_rate(rate, entry) for rate, entry in point["rates"].items())
    return f"{rates}. P3D on {point.get('volumes')} volumes, {point.get('lesions')} lesions ({point.get('truth', '')})"


def _kept_operating_point(layout: TrainLayout, scanner: Scanner, prepared: dict[str, PreparedVolume],
                          validation: dict[str, list[SliceBox]], validation_source: str, stack: StackConfig,
                          data: str | Path, dist: Distributed) -> dict | None:
    """best.pt's operating point: the one it holds, or measured now on the validation volumes and
    stored in it (so that a rerun after a kill measures it once). ``scanner`` runs the training's model,
    which gets best.pt's weights."""
    payload = scanner.model.read_checkpoint(layout.best)
    stored = checkpoint_operating_point(layout.best, payload)
    if stored is not None:
        return stored
    if not any(validation.values()):
        log.warning("%s: no validation lesions, so no operating point (detect --fp-per-volume needs one; measure "
                    "it later with lesion-harvester info %s --measure-operating-point DATA)", data, layout.best)
        return None
    scanner.model.load_weights(payload, layout.best)
    scanner.model.eval()
    point = {**operating_point(scanner, prepared.__getitem__, validation, stack, dist), "truth": validation_source,
             "data": str(Path(data).resolve()), "epoch": int(payload.get("epoch", -1)) + 1}
    if dist.is_main:
        store_operating_point(layout.best, point, payload)
    dist.barrier()
    log.info("operating point of %s: %s", layout.best, describe_operating_point(point))
    return point


def measure_operating_point(checkpoint: str | Path, data: str | Path | None = None,
                            fully_annotated: str | Path | None = None, device: str = "auto",
                            cache_dir: str | Path | None = None) -> dict:
    """Measure an LPG checkpoint's operating point on a dataset's validation volumes and store it in the
    checkpoint (replacing the one it held), for checkpoints trained before training stored one.

    Args:
        checkpoint: an LPG ``best.pt`` (of ``train-lpg`` or of a harvest round).
        data: a DeepLesion-layout folder; by default the one the checkpoint trained on (as recorded).
        fully_annotated: V_M's labels file, which decides the validation volumes of a dataset that names
            none; by default the one the checkpoint trained with when ``data`` is its training data.
        device, cache_dir: as for training.
    Returns:
        The operating point stored (:func:`operating_point`, with the validation set's description).
    """
    payload = load_checkpoint(checkpoint)
    recorded = payload.get("training_data") if isinstance(payload.get("training_data"), dict) else {}
    if data is None:
        data = recorded.get("path")
        if not data:
            raise ConfigError(f"{checkpoint}: the checkpoint records no training data; give the dataset folder")
    if fully_annotated is None and str(Path(data).resolve()) == recorded.get("path"):
        inputs = recorded.get("inputs") or [None]
        fully_annotated = inputs[0]
    part = resolve_partition(data, fully_annotated, need_fully_annotated=False,
                             purpose="measuring an operating point")
    if not any(part.validation.values()):
        raise DataError(data, "no validation volumes with lesions to measure an operating point on")
    device = resolve_device(device)
    model, pre, _ = MSCN.load(checkpoint, device, payload)
    cache = PreparedCache(cache_dir_for(data, cache_dir), pre)
    scanner = Scanner(model, pre, ScanConfig(), device)
    folder = TrainLayout(Path(checkpoint).parent)
    with locked_output(folder.lock, folder.root):  # not while a training writes this folder
        point = {**operating_point(scanner, lambda key: cache.get(part.source, key), part.validation,
                                   checkpoint_stack(checkpoint, payload)),
                 "truth": part.validation_source, "data": str(Path(data).resolve()),
                 "epoch": int(payload.get("epoch", -1)) + 1}
        store_operating_point(checkpoint, point, payload)
    log.info("operating point of %s: %s", checkpoint, describe_operating_point(point))
    return point


def best_score(history: list[dict]) -> float | None:
    """The best validation score of ``history``; None when no epoch had one."""
    scores = [e["score"] for e in history if e.get("score") is not None]
    return max(scores) if scores else None


def kept_epoch(history: list[dict], keep: str) -> int | None:
    """The epoch (1-based) that best.pt holds after ``history``: the first with the best validation
    score, or the last one when ``keep`` is "last" or no epoch had a score."""
    if not history:
        return None
    scored = [e for e in history if e.get("score") is not None]
    if keep == "last" or not scored:
        return history[-1]["epoch"]
    return max(scored, key=lambda e: (e["score"], -e["epoch"]))["epoch"]


def describe_training_data(data: str | Path, inputs: list) -> dict:
    """What a checkpoint records of its training data: the folder, the digest of its label table
    (DL_info.csv, whose rows are the marks) and the extra inputs (V_M's labels, harvested lesions, ...)."""
    table = Path(data) / "DL_info.csv"
    return {"path": str(Path(data).resolve()), "dl_info_sha1": file_digest(table) if table.is_file() else None,
            "inputs": [None if i is None else str(i) for i in inputs]}


# what last.pt must hold to resume a training
RESUME_ENTRIES = ("state_dict", "optimizer", "scheduler", "history", "epoch", "rng_torch", "fingerprint")


@dataclass(frozen=True)
class TrainingOptions:
    """How a training runs, apart from what it trains (the detector, its settings) and on what (its labels).

    Attributes:
        device: "auto", "cpu", "cuda" or "cuda:N".
        init: a checkpoint of the same detector whose weights it starts from (fine-tuning).
        cache_dir: where prepared volumes are kept (:func:`lesion_harvester.paths.cache_dir_for`).
        progress: progress bars.
        exclude_volumes: training volumes it must not see (a harvest's calibration volumes).
        drop_known_positives: leave out the extra positives that are marked or labelled lesions
            already (:mod:`.sources`), so that no lesion counts twice.
        dist: this rank under torchrun. Each rank draws its share of every batch and DDP averages
            the gradients (batch norm over the global batch), so N processes train what one process
            does; validation and hard-background mining are shared out by volume; only the main rank writes.
    """

    device: str = "auto"
    init: str | None = None
    cache_dir: str | Path | None = None
    progress: bool = True
    exclude_volumes: tuple[str, ...] = ()
    drop_known_positives: bool = False
    dist: Distributed = ALONE


def train_lpg(data: str | Path, out_dir: str | Path, preset: Preset, device: str = "auto",
              fully_annotated: str | None = None, extra_positives: str | None = None,
              hard_negatives: str | None = None, init: str | None = None, cache_dir: str | Path | None = None,
              progress: bool = True, exclude_volumes: list[str] | None = None,
              drop_known_positives: bool = False, dist: Distributed = ALONE) -> dict:
    """Train (or resume training) the LPG (the MSCN of ``preset.lpg``) into ``out_dir`` on the marks and
    labels of ``data`` and the annotation files given; :func:`train_detector` with them as a label set."""
    labels = LabelSet("", Path(data), fully_annotated, extra_positives, hard_negatives)
    return train_detector(MSCN, labels, preset, out_dir, TrainingOptions(
        device, init, cache_dir, progress, tuple(exclude_volumes or ()), drop_known_positives, dist))


def train_detector(detector: type[DetectionModel], labels: LabelSet, preset: Preset, out_dir: str | Path,
                   options: TrainingOptions = TrainingOptions()) -> dict:
    """Train (or resume training) a ``detector`` on ``labels`` into ``out_dir``; returns the training
    summary. ``preset``: the detector's settings (``detector.configure`` adjusts them), ``lpg_train``
    (crops, augmentation, schedule), ``preprocess``, ``scan`` (validation) and ``stack`` (stored with
    the checkpoints). The log records of the training are appended to ``out_dir/train.log``."""
    preset = detector.configure(preset)
    dist = options.dist
    if labels.hard_negatives and not detector.hard_negatives:
        raise ConfigError(f"the {detector.WHAT} has no hard negative loss; train it on a label set without hard "
                          f"negatives (not {labels.hard_negatives})")
    if dist.active and not detector.distributed:
        raise ConfigError(f"the {detector.WHAT} trains as one process; run it without torchrun")
    device = dist.device(resolve_device(options.device))  # before anything is written
    layout = TrainLayout(Path(out_dir))
    # the folder is made (or found writable) and locked before any work; under torchrun rank 0 holds
    # the lock for every rank (they train one model into one folder)
    with (locked_output(layout.lock, layout.root, take=dist.is_main),
          log_to_file(layout.log) if dist.is_main else contextlib.nullcontext()):
        log.info("training the %s on %s into %s (preset %s, device %s%s)", detector.WHAT, labels.data, layout.root,
                 preset.name, device, f", {dist.world_size} processes" if dist.active else "")
        return _train(detector, labels, preset, layout, device, options)


def _train(detector: type[DetectionModel], labels: LabelSet, preset: Preset, layout: TrainLayout, device: str,
           options: TrainingOptions) -> dict:
    cfg, dist, data = preset.lpg_train, options.dist, labels.data
    samples = dist.batch_share(cfg.batch_size)  # before any work: a batch the ranks cannot share is an error
    progress = options.progress and dist.is_main
    exclude_volumes = sorted(options.exclude_volumes)
    start_time = time.time()
    torch.manual_seed(cfg.seed)
    sources = build_sources(data, labels.fully_annotated, labels.extra_positives, labels.hard_negatives,
                            exclude_volumes, options.drop_known_positives)
    validation = sources.validation if detector.validated else {}
    if any(validation.values()):
        log.info("validation: %s", sources.validation_source)  # the harvest warns when they are held out
    elif detector.validated:
        log.warning("%s: no validation volumes with lesions, so no epoch can be chosen: best.pt will be the "
                    "latest epoch", data)
    cache = PreparedCache(cache_dir_for(data, options.cache_dir), preset.preprocess)
    keys = list(dict.fromkeys(sources.training.volume_keys + list(validation)))
    if dist.active and cache.dir is not None:  # each rank prepares its share into the cache first
        for k in dist.shard(keys):
            cache.get(sources.source, k)
        dist.barrier()
    prepared = {k: cache.get(sources.source, k) for k in tqdm(keys, desc="preparing volumes", unit="vol",
                                                              disable=not progress)}
    model = detector.build(preset).to(device)
    if options.init:
        model.load_weights(detector.read_checkpoint(options.init), options.init)
    net = distributed_model(model, device) if dist.active else model  # what the training step runs
    optimizer = make_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, cfg))
    use_amp = cfg.amp and device.startswith("cuda") and detector.amp
    amp_dtype = getattr(torch, cfg.amp_dtype)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)  # bf16 needs none
    inputs = [labels.fully_annotated, labels.extra_positives, labels.hard_negatives, options.init]
    inputs += [exclude_volumes] if exclude_volumes else []
    # named only where it acts, so that the fingerprints of older runs stay valid
    inputs += ["drop_known_positives"] if options.drop_known_positives and labels.extra_positives else []
    fingerprint = detector.training_fingerprint(preset, data, inputs)
    training_data = describe_training_data(data, inputs)
    history: list[dict] = []
    start_epoch = 0
    hard_background: HardBackground = []
    if layout.last.is_file():
        state = detector.read_checkpoint(layout.last, RESUME_ENTRIES)
        if state.get("fingerprint") != fingerprint:
            raise ConfigError(f"{layout.last}: this folder holds a run with other settings or data; "
                              "use a new --out folder (or delete it to start over)")
        model.load_weights(state, layout.last)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history, start_epoch = state["history"], state["epoch"] + 1
        torch.set_rng_state(state["rng_torch"])
        log.info("resuming %s after epoch %d", layout.root, state["epoch"] + 1)
    scanner = Scanner(model, preset.preprocess, preset.scan, device)
    if dist.is_main:
        dump_config(preset, layout.config)
    fully_annotated = {k: v for k, v in sources.fully_annotated_truth.items() if k in prepared}
    keep = cfg.keep_epoch if detector.validated else "last"
    for epoch in range(start_epoch, cfg.epochs):
        if detector.validated and cfg.mine_hard_background and epoch > 0 and fully_annotated:
            model.eval()
            hard_background = mine_hard_background(
                scanner, prepared, fully_annotated, sources.training, cfg.mine_min_score, cfg.mine_per_slice, dist)
            log.info("epoch %d: %d hard background locations", epoch + 1, len(hard_background))
        model.train()

        def make_sampler(_hard=hard_background):
            return CropSampler(sources.training, prepared, model.num_slices, preset.preprocess, cfg,
                               hard_background=_hard)

        batches = epoch_loader(make_sampler, functools.partial(model.build_targets, train=cfg), cfg.seed, epoch,
                               cfg.iters_per_epoch, cfg.batch_size, cfg.loader_workers, samples,
                               pin_memory=device.startswith("cuda"))
        bar = tqdm(batches, total=cfg.iters_per_epoch,
                   desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="it", disable=not progress, dynamic_ncols=True)
        running = None
        epoch_start = time.time()
        for x, targets in bar:
            x = x.to(device, non_blocking=True)
            targets = _to_device(targets, device)
            with torch.autocast("cuda", dtype=amp_dtype, enabled=use_amp):
                outputs = net(x)
            # under DDP: normalised by the whole batch's objects, the ranks' losses sum to the one-process
            # loss; DDP averages their gradients, hence the factor
            totals = dist.all_sum(model.loss_totals(targets)) if dist.active else None
            loss, parts = model.loss(outputs, targets, cfg, totals)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss * dist.world_size).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            value = float(dist.all_sum(loss.detach()))
            running = value if running is None else 0.95 * running + 0.05 * value
            bar.set_postfix(loss=f"{running:.3f}", **{k: f"{v:.3f}" for k, v in parts.items()},
                            lr=f"{scheduler.get_last_lr()[0]:.2e}")
        bar.close()
        model.eval()
        entry = {"epoch": epoch + 1, "loss": running, "train_s": round(time.time() - epoch_start, 1)}
        if detector.validated:
            entry |= {"hard_background": len(hard_background), **validate(scanner, prepared, validation, dist)}
        history.append(entry)
        improved = kept_epoch(history, keep) == epoch + 1  # best.pt is replaced by this epoch
        score = entry.get("score")
        if not detector.validated:
            log.info("epoch %d: loss %.3f", epoch + 1, running)
        elif score is None:  # nothing to choose on: a checkpoint is never selected on an empty set
            log.info("epoch %d: loss %.3f (no validation slices: best.pt is the latest epoch)", epoch + 1, running)
        else:
            note = " (best.pt keeps the last epoch)" if cfg.keep_epoch == "last" else " (best)" if improved else ""
            log.info("epoch %d: loss %.3f, validation mean sensitivity %.3f%s", epoch + 1, running, score, note)
        common = {"epoch": epoch, "score": score, "fingerprint": fingerprint, "preset": preset.name,
                  "training_data": training_data}
        if improved and dist.is_main:
            save_checkpoint(layout.best, model.payload(preset.preprocess, preset.stack, **common))
        if dist.is_main:
            save_checkpoint(layout.last, model.payload(
                preset.preprocess, preset.stack, **common, optimizer=optimizer.state_dict(),
                scheduler=scheduler.state_dict(), history=history, best_score=best_score(history),
                rng_torch=torch.get_rng_state()))
        dist.barrier()  # an epoch ends when its checkpoint is on disk
    operating = (_kept_operating_point(layout, scanner, prepared, validation, sources.validation_source,
                                       preset.stack, data, dist) if history and detector.validated else None)
    summary = {"best_score": best_score(history), "kept_epoch": kept_epoch(history, keep),
               "operating_point": operating,
               "epochs": len(history), "history": history,
               "elapsed_s": round(time.time() - start_time, 1), "device": device, "processes": dist.world_size,
               "training_slices": len(sources.training.records), "training_volumes": len(sources.training.volume_keys)}
    if dist.is_main:
        atomic_write_text(layout.train_log, json.dumps(summary, indent=1))
    return summary


def _to_device(targets, device: str):
    """A batch's targets (tensors, or dicts and lists of them) on ``device``."""
    if isinstance(targets, torch.Tensor):
        return targets.to(device, non_blocking=True)
    if isinstance(targets, dict):
        return {k: _to_device(v, device) for k, v in targets.items()}
    if isinstance(targets, (list, tuple)):
        return [_to_device(v, device) for v in targets]
    return targets
