"""The steps of a harvest round (paper Fig. 2), each a function of explicit inputs.

:mod:`lesion_harvester.harvest.rounds` composes them and records each result in the ledger;
every step here can be called (and tested) on its own:

1. :func:`lpg_preset` and :func:`pool_examples`: what the round's LPG trains on (round 1: the
   preset; later rounds: a fine-tuning from the previous LPG on pooled positives and hard
   negatives), trained by :func:`lesion_harvester.lpg.train.train_lpg`;
2. scanning: :func:`lesion_harvester.lpg.propose.propose`;
3. verification: :func:`lesion_harvester.harvest.verify.verify_proposals`;
4. :func:`lpc_examples` and :func:`lesion_harvester.lpc.api.train_lpc_folds`: the LPC, K-fold over V_M;
5. :func:`lpc_probabilities` and :func:`fuse`: s_c of every classifiable proposal, and s = s_g * s_c**w;
6. mining: :func:`lesion_harvester.harvest.mine.mine_round`;
7. :func:`lpc_variant_scores` (round 1): the axial and 3D LPCs of the paper's Fig. 5b (:data:`FIG5B_VARIANTS`).

:func:`train_lpc_on_proposals` is steps 3-4 outside a harvest (``lesion-harvester train-lpc``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from lesion_harvester.config import LPCConfig, Preset
from lesion_harvester.dataset.prepared_cache import PreparedCache
from lesion_harvester.dataset.roles import Partition, resolve_partition
from lesion_harvester.device import resolve_device
from lesion_harvester.errors import ConfigError, DataError
from lesion_harvester.harvest.ledger import ProposalRow
from lesion_harvester.harvest.mine import choose_fusion_exponent, fused_score
from lesion_harvester.harvest.verify import (
    FA_LESION,
    FA_NEGATIVE,
    RECIST,
    covers_marks,
    dedupe,
    known_extents,
    on_lesions,
    verify_proposals,
)
from lesion_harvester.io.annotations import read_tracklets
from lesion_harvester.lpc.api import LPCExamples, PreparedVolumes, proposal_patches, train_lpc_folds
from lesion_harvester.lpc.model import LesionProposalClassifier
from lesion_harvester.lpc.train import predict_lpc, train_lpc
from lesion_harvester.lpc.variants import VARIANTS
from lesion_harvester.paths import cache_dir_for
from lesion_harvester.structures import Box3D, RecistMark, SliceBox, Tracklet, group_by_volume

T = TypeVar("T")

POSITIVE = (FA_LESION, RECIST, "harvested")  # statuses whose proposals fine-tune the LPG as lesions
CLASSIFY_CHUNK = 2000  # V_H proposals classified at a time, to bound the patches in memory
FIG5B_VARIANTS = ("axial", "3d")  # the LPC variants the paper's Fig. 5b compares with the multi-view LPC


# --- step 1: the LPG ------------------------------------------------------------------------------------
def calibration_volumes(fully_annotated: list[str], n: int, seed: int) -> list[str]:
    """``n`` V_M volumes drawn with ``seed`` (sorted), to be kept out of LPG training; [] for n = 0.

    All of V_M (n = its size) is allowed: the LPG then trains on every volume's RECIST marks alone,
    V_M's included, so that its scores on V_M's unmarked lesions and false positives are as out of
    sample as on V_H's, and the threshold set on them is one that V_H keeps."""
    if n <= 0:
        return []
    if n > len(fully_annotated):
        raise ConfigError(f"harvest.calibration_volumes: {n}, but there are {len(fully_annotated)} fully annotated "
                          "volumes (0: all of V_M trains the LPG, as in the paper; all of them: none does)")
    return _draw(fully_annotated, n, seed)


def calibration_mark_volumes(harvest: list[str], exclude: set[str], share: float, seed: int) -> list[str]:
    """``share`` of the V_H volumes outside ``exclude`` (V_H^test, validation), drawn with ``seed``
    (sorted): their RECIST marks train no model and tell how often the harvest finds a lesion
    (:mod:`lesion_harvester.harvest.precision`); [] for share 0."""
    candidates = [k for k in harvest if k not in exclude]
    n = int(round(share * len(candidates)))
    return _draw(candidates, n, [seed, 7]) if n > 0 else []


def withheld_volumes(partition: Partition, holdout: Iterable[str], preset: Preset) -> tuple[list[str], list[str]]:
    """What a harvest of ``partition`` with ``preset`` keeps out of training: (the calibration volumes of
    V_M, :func:`calibration_volumes`; the V_H volumes whose marks are held out, :func:`calibration_mark_volumes`,
    drawn outside ``holdout`` (V_H^test) and the validation volumes)."""
    seed = preset.lpg_train.seed
    calibration = calibration_volumes(list(partition.fully_annotated), preset.harvest.calibration_volumes, seed)
    held_out_marks = calibration_mark_volumes(partition.harvest, set(holdout) | set(partition.validation),
                                              preset.harvest.calibration_marks, seed)
    return calibration, held_out_marks


def _draw(keys: list[str], n: int, seed) -> list[str]:
    """``n`` of ``keys`` drawn with ``seed`` (independent of the keys' order), sorted."""
    return sorted(np.random.default_rng(seed).choice(sorted(keys), n, replace=False).tolist())


def lpg_preset(preset: Preset, round_: int) -> Preset:
    """The settings of round ``round_``'s LPG: the preset's for round 1; for later rounds a short
    fine-tuning (``harvest.finetune_*``) at a lower learning rate, with a seed of its own."""
    if round_ == 1:
        return preset
    h, t = preset.harvest, preset.lpg_train
    return dataclasses.replace(preset, lpg_train=dataclasses.replace(
        t, epochs=h.finetune_epochs, iters_per_epoch=h.finetune_iters_per_epoch, lr=t.lr * h.finetune_lr_factor,
        warmup_iters=min(t.warmup_iters, 50), seed=t.seed + round_))


def pool_examples(rounds: Sequence[tuple[list[tuple[str, Tracklet]], list[tuple[str, Tracklet]]]],
                  held_out: set[str], lesions: dict[str, list[Box3D]] | None = None
                  ) -> tuple[list[tuple[str, Tracklet]], list[tuple[str, Tracklet]]]:
    """The fine-tuning examples of the next round's LPG: positives (P_M^R, P_H^R, P_H^+) and hard
    negatives (P_M^-, P_H^-) of earlier rounds, given later rounds first as (positives, negatives).

    Duplicates are removed (a lesion found in several rounds is kept once, the latest round's;
    negatives at a 3D IoU of 0.1 already); nothing of the ``held_out`` volumes is kept (the
    calibration volumes, which the LPG must not learn from). A negative that touches a pooled
    positive or one of the known ``lesions`` (:func:`~lesion_harvester.harvest.verify.touches`; a
    round-1 negative on a lesion harvested in round 3, say) is dropped: the HNSL's overwrite (Eq. 3)
    would otherwise train that lesion as a negative.
    """
    positives = dedupe([item for pos, _ in rounds for item in pos if item[0] not in held_out])
    negatives = dedupe([item for _, neg in rounds for item in neg if item[0] not in held_out], 0.1)
    on_lesion = on_lesions(negatives, known_extents(positives, known=lesions))
    return positives, [item for item, on in zip(negatives, on_lesion) if not on]


# --- step 4: LPC training examples ------------------------------------------------------------------------
def lpc_examples(vm_rows: list[tuple[str, Tracklet, str]], marked: list[tuple[str, Tracklet]],
                 fully_annotated: dict[str, list[SliceBox]], marks: dict[str, list[RecistMark]],
                 min_positives: int, unlabelled: list[tuple[str, Tracklet]] | None = None,
                 vh_negatives: list[tuple[str, Tracklet]] | None = None) -> LPCExamples:
    """The LPC's training examples from verified proposals.

    Args:
        vm_rows: (volume, tracklet, status) of the V_M proposals, status fa_lesion or fa_negative.
        marked: (volume, tracklet) of the V_H proposals covering a mark (P_H^R).
        fully_annotated, marks: V_M's complete labels and V_H's RECIST marks: with fewer verified
            positives than ``min_positives`` (a weak early LPG), these known lesion boxes join the
            positives as one-slice proposals.
        unlabelled: the V_H proposals LPC pretraining learns from (:func:`pretraining_items`).
        vh_negatives: V_H proposals taken as negatives (:func:`vh_negative_items`).
    """
    labels = np.array([status == FA_LESION for _, _, status in vm_rows], dtype=np.int64)
    positives = list(marked)
    if int(labels.sum()) + len(positives) < min_positives:
        known = [(k, b) for k, boxes in fully_annotated.items() for b in boxes]
        known += [(k, m.slice_box()) for k, ms in marks.items() for m in ms]
        positives += [(k, Tracklet.single_slice(b.z_index, b.box_xyxy_px, 1.0)) for k, b in known]
    return LPCExamples([(key, t) for key, t, _ in vm_rows], labels, positives, list(unlabelled or []),
                       list(vh_negatives or []))


def pretraining_items(proposals: list[tuple[str, Tracklet]], exclude: set[str], cfg: LPCConfig
                      ) -> list[tuple[str, Tracklet]]:
    """What ``lpc.pretrain: lpg_scores`` learns from: the (volume, tracklet) ``proposals`` outside the
    ``exclude`` volumes (V_M, and V_H^test in a harvest) with s_g >= ``cfg.min_objectness``, at most
    ``cfg.pretrain_per_volume`` per volume by s_g; none unless pretraining is on."""
    if cfg.pretrain == "none":
        return []
    return _top_per_volume(((key, t) for key, t in proposals if key not in exclude),
                           lambda t: t.score >= cfg.min_objectness, lambda t: -t.score, cfg.pretrain_per_volume)


def known_lesions(partition: Partition, found: Iterable[tuple[str, Tracklet]]) -> dict[str, list[Box3D]]:
    """Where the lesions known to a round lie, per volume (:func:`known_extents`): V_H's RECIST marks
    and V_M's complete labels of ``partition``, and the (volume, tracklet) proposals ``found`` on
    lesions (harvested, or accepted by a reviewer). No hard negative, nor LPC negative of V_H, may touch them."""
    labels = {key: [m.slice_box() for m in marks] for key, marks in partition.marks.items()}
    for key, boxes in partition.fully_annotated.items():
        labels.setdefault(key, []).extend(boxes)
    spacing = {key: partition.dataset.sub_volumes[key].spacing_zyx_mm for key in labels}
    return known_extents(list(found), labels, spacing)


def vh_negative_items(proposals: list[tuple[str, Tracklet]], exclude: set[str], known: dict[str, list[Box3D]],
                      cfg: LPCConfig, seed: int) -> list[tuple[str, Tracklet]]:
    """The V_H proposals the LPC takes as negatives (``lpc.vh_negatives_per_volume``): of the
    (volume, tracklet) ``proposals`` outside the ``exclude`` volumes with ``cfg.min_objectness`` <= s_g
    < ``cfg.vh_negatives_below`` that touch none of the ``known`` lesions (:func:`on_lesions`), at most
    ``cfg.vh_negatives_per_volume`` per volume drawn at random (``seed``; volumes in sorted order, each
    volume's picks in the order given). Unlabelled, so a few may be lesions nobody marked: on bench seed 0,
    0.13-0.17% of them below s_g 0.5 (benchmarks/RESULTS.md, issue 34)."""
    if cfg.vh_negatives_per_volume == 0:
        return []
    eligible = [(key, t) for key, t in proposals
                if key not in exclude and cfg.min_objectness <= t.score < cfg.vh_negatives_below]
    by_volume = group_by_volume(item for item, on in zip(eligible, on_lesions(eligible, known)) if not on)
    rng, picked = np.random.default_rng(seed), []
    for key in sorted(by_volume):
        members = by_volume[key]
        chosen = np.sort(rng.choice(len(members), min(cfg.vh_negatives_per_volume, len(members)), replace=False))
        picked += [(key, members[i]) for i in chosen]
    return picked


def lpc_shortfall(examples: LPCExamples, folds: list[list[str]]) -> str | None:
    """Why the LPC cannot be trained on ``examples`` in ``folds`` (as
    :func:`~lesion_harvester.lpc.api.train_lpc_folds` would), or None: each fold trains on the V_M
    proposals outside it and every positive, and needs positives and negatives both. On a V_M of one or
    two volumes a fold may have no V_M proposal outside it, hence no negative (while V_H's marks still
    give positives), or every V_M proposal may be a lesion."""
    for f, fold in enumerate(folds):
        held = set(fold) if len(folds) > 1 else set()
        labels = [int(label) for (key, _), label in zip(examples.vm_items, examples.vm_labels) if key not in held]
        positives = sum(labels) + len(examples.positives)
        negatives = len(labels) - sum(labels) + len(examples.negatives)
        if positives == 0 or negatives == 0:
            which = f" to train fold {f + 1} of {len(folds)} on" if len(folds) > 1 else ""
            return f"cannot train the LPC: {positives} positive and {negatives} negative proposals{which}"
    return None


def lpg_alone(rows: list[ProposalRow]) -> dict[tuple[str, int], float]:
    """s_c = 1 for every row: the fused score of a round without an LPC is the LPG's objectness, s = s_g."""
    return {(row.volume, row.idx): 1.0 for row in rows}


def lpc_folds(fully_annotated: list[str], folds: int) -> list[list[str]]:
    """V_M split into ``folds`` groups of volumes (sorted keys, dealt round-robin)."""
    k = max(1, folds)
    keys = sorted(fully_annotated)
    return [keys[i::k] for i in range(k)]


# --- step 5: classification and the fused score -------------------------------------------------------------
def classifiable(rows: list[ProposalRow], cfg: LPCConfig) -> list[ProposalRow]:
    """Proposals the LPC scores: s_g >= min_objectness, at most max_per_volume per volume (by s_g)."""
    return [row for _, row in _top_per_volume(((row.volume, row) for row in rows),
                                              lambda row: row.objectness >= cfg.min_objectness,
                                              lambda row: (-row.objectness, row.idx), cfg.max_per_volume)]


def _top_per_volume(items: Iterable[tuple[str, T]], keep: Callable[[T], bool], rank: Callable[[T], Any],
                    k: int) -> list[tuple[str, T]]:
    """(volume, item) pairs whose item passes ``keep``: the ``k`` first of each volume by ``rank``."""
    by_volume = group_by_volume((key, item) for key, item in items if keep(item))
    return [(key, item) for key, members in by_volume.items() for item in sorted(members, key=rank)[:k]]


def lpc_probabilities(models: list[LesionProposalClassifier], folds: list[list[str]], vm_rows: list[ProposalRow],
                      candidates: list[ProposalRow], volumes: PreparedVolumes, cfg: LPCConfig, device: str = "cpu",
                      progress: bool = False) -> dict[tuple[str, int], float]:
    """s_c of every classifiable proposal, keyed by (volume, proposal index).

    V_M proposals are scored out of fold (by the model of the fold that held their volume out);
    V_H candidates by the mean of the fold models. Proposals left out by :func:`classifiable` get none.
    """
    probability: dict[tuple[str, int], float] = {}
    for model, fold in zip(models, folds):
        held = set(fold)
        rows = classifiable([row for row in vm_rows if row.volume in held], cfg)
        if rows:
            x = proposal_patches([(row.volume, row.tracklet) for row in rows], volumes, cfg, progress).float()
            probability.update({(row.volume, row.idx): float(s) for row, s in zip(rows, predict_lpc(model, x,
                                                                                                     device=device))})
    rows = classifiable(candidates, cfg)
    for start in range(0, len(rows), CLASSIFY_CHUNK):
        chunk = rows[start:start + CLASSIFY_CHUNK]
        x = proposal_patches([(row.volume, row.tracklet) for row in chunk], volumes, cfg, progress).float()
        scores = np.mean([predict_lpc(m, x, device=device) for m in models], axis=0)
        probability.update({(row.volume, row.idx): float(s) for row, s in zip(chunk, scores)})
    return probability


def fuse(threshold_rows: list[ProposalRow], threshold_marks: dict[str, list[RecistMark]],
         scored_rows: list[ProposalRow], probability: dict[tuple[str, int], float], exponents: tuple[float, ...],
         precision: float, by: str = "admitted",
         verify_iou: float = 0.5) -> tuple[list[tuple[str, int, float, float]], float, list[dict]]:
    """The fused score s = s_g * s_c**w of ``scored_rows``, w chosen on ``threshold_rows`` (V_M) by
    :func:`~lesion_harvester.harvest.mine.choose_fusion_exponent`; unclassified proposals get s_c = 0.

    The V_M proposals covering one of V_M's original marks (``threshold_marks``) are left out of the
    choice, as :func:`~lesion_harvester.harvest.mine.mine_round` leaves them out of the threshold: in
    V_H only proposals that cover no mark can be harvested, and the marked lesions, which every model
    trained on, sit at the top of the ranking: counted, they credited an exponent with lesions that
    the mine step, without them, did not find (benchmarks/RESULTS.md, 'Harvest (demo)').

    Returns ((volume, idx, s_c, s) per scored row, w, the table of the exponents tried).
    """
    covering = covers_marks([(row.volume, row.tracklet) for row in threshold_rows], threshold_marks, verify_iou)
    new = [row for row, covers in zip(threshold_rows, covering) if not covers]
    s_c = np.array([probability.get((row.volume, row.idx), 0.0) for row in new])
    exponent, table = choose_fusion_exponent(
        np.array([row.objectness for row in new]), s_c,
        np.array([row.status == FA_LESION for row in new]), exponents, precision, by)
    updates = []
    for row in scored_rows:
        c = probability.get((row.volume, row.idx), 0.0)
        updates.append((row.volume, row.idx, c, float(fused_score(row.objectness, c, exponent))))
    return updates, exponent, table


# --- step 7: the LPC variants of Fig. 5b ---------------------------------------------------------------------
def lpc_variant_scores(examples: LPCExamples, targets: list[ProposalRow], volumes: PreparedVolumes,
                       cfg: LPCConfig, epochs: int, device: str = "cpu",
                       progress: bool = False) -> dict[str, dict[str, float]]:
    """Train the axial 2D and the 3D LPC on ``examples`` (all of V_M; ``epochs`` each, 0: as ``cfg``)
    and score ``targets`` with each: {variant: {"volume#idx": s_c}}."""
    result = {}
    for variant in FIG5B_VARIANTS:
        variant_cfg = VARIANTS.get(variant).comparison_settings(dataclasses.replace(
            cfg, variant=variant, pretrained_path=None, epochs=epochs or cfg.epochs))
        parts = [(examples.vm_items, examples.vm_labels), (examples.positives, np.ones(len(examples.positives))),
                 (examples.negatives, np.zeros(len(examples.negatives)))]
        x = torch.cat([proposal_patches(items, volumes, variant_cfg, progress) for items, _ in parts if items]).float()
        y = np.concatenate([labels for items, labels in parts if items]).astype(np.int64)
        model = train_lpc(x, y, variant_cfg, device, seed=variant_cfg.seed + 7, progress=progress,
                          desc=f"LPC {variant}")
        scores = []
        if targets:
            patches = proposal_patches([(row.volume, row.tracklet) for row in targets], volumes, variant_cfg, progress)
            scores = predict_lpc(model, patches.float(), device=device)
        result[variant] = {f"{row.volume}#{row.idx}": float(s) for row, s in zip(targets, scores)}
    return result


# --- steps 3-4 outside a harvest: ``train-lpc`` ------------------------------------------------------------------
def train_lpc_on_proposals(data: str | Path, proposals: str | Path, out: str | Path, preset: Preset,
                           fully_annotated: str | None = None, device: str = "auto", progress: bool = True,
                           cache_dir: str | Path | None = None) -> dict:
    """Verify a proposal file against V_M's complete labels and V_H's marks, as a harvest round does,
    and train one LPC on the result (written to ``out``). Returns the example counts. ``cache_dir``:
    see :func:`lesion_harvester.paths.cache_dir_for`."""
    device = resolve_device(device)
    part = resolve_partition(data, fully_annotated, purpose="training the LPC")
    tracklets = read_tracklets(proposals)
    statuses = verify_proposals(tracklets, part.fully_annotated, part.marks, preset.harvest.verify_iou)
    vm_rows = [(key, t, s) for key, ts in tracklets.items() for t, s in zip(ts, statuses[key])
               if s in (FA_LESION, FA_NEGATIVE)]
    marked = [(key, t) for key, ts in tracklets.items() for t, s in zip(ts, statuses[key]) if s == RECIST]
    if not vm_rows and not marked:
        raise DataError(proposals, "no proposal in the fully annotated or harvest volumes of this dataset")
    unlabelled = pretraining_items([(key, t) for key, ts in tracklets.items() for t in ts],
                                   set(part.fully_annotated), preset.lpc)
    examples = lpc_examples(vm_rows, marked, part.fully_annotated, part.marks, preset.lpc.min_positives, unlabelled)
    cache = PreparedCache(cache_dir_for(data, cache_dir), preset.preprocess)
    train_lpc_folds(examples, [[]], lambda key: cache.get(part.source, key), preset.lpc, preset.preprocess,
                    [Path(out)], device, seed=preset.lpc.seed, progress=progress)
    return examples.counts()
