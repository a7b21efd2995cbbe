"""Harvest rounds (paper Fig. 2): train or fine-tune the LPG, scan, verify, train the LPC, mine.

Each step of each round is recorded in the ledger when it finishes; rerunning continues after the
last finished step. Long steps resume inside themselves too: LPG training from its ``last.pt``,
scanning from its partial folder, LPC training fold by fold.

Round 1 trains the LPG on the RECIST marks and the complete labels of V_M. Round i > 1 fine-tunes
the previous LPG on the highest-objectness slice of every proposal in P_M^R, P_H^R and P_H^+
(positives) and P_M^-, P_H^- (hard negatives, through the HNSL), pooled over the earlier rounds.
The LPC is trained in K folds over V_M: each V_M proposal is scored by the model that did not see
its volume (so the 95%-precision threshold is not set on training data), and V_H proposals by the
mean of the fold models. With ``harvest.calibration_volumes`` some V_M volumes are kept out of LPG
training too, and the threshold is set on them alone.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from lesion_harvester.config import Preset, dump_config, settings_fingerprint
from lesion_harvester.errors import ConfigError
from lesion_harvester.geometry.boxes import iou3d_voc
from lesion_harvester.harvest.ledger import Ledger, ProposalRow
from lesion_harvester.harvest.mine import (
    choose_fusion_exponent,
    fused_score,
    mine,
    precision_lower_bound,
    precision_threshold,
)
from lesion_harvester.harvest.verify import match_known
from lesion_harvester.io.annotations import RecistMark, Tracklet, write_slice_boxes, write_tracklets
from lesion_harvester.io.partition import Partition, resolve_partition
from lesion_harvester.lpc.patches import extract_patches
from lesion_harvester.lpc.train import load_lpc, predict_lpc, save_lpc, train_lpc
from lesion_harvester.lpg.data import PreparedCache
from lesion_harvester.lpg.propose import propose
from lesion_harvester.lpg.train import default_cache_dir, train_lpg

log = logging.getLogger(__name__)

POSITIVE = ("fa_lesion", "recist", "harvested")
STEPS = ("lpg", "scan", "verify", "lpc", "classify", "mine")


def scaled_tracklet(t: Tracklet, factor: float) -> Tracklet:
    """The tracklet with every 2D score multiplied by ``factor`` (so its objectness becomes s_g * factor)."""
    return Tracklet(t.z_indices, t.boxes_xyxy_px, t.scores * factor)


def _overlaps_any(box: np.ndarray, others: list[np.ndarray], min_iou: float) -> bool:
    return any(iou3d_voc(box, other) >= min_iou for other in others)


def _extended_box(t: Tracklet) -> np.ndarray:
    """(x1, y1, x2, y2, z1 - 1, z2 + 1): a tracklet's 3D box grown by one slice up and down, so that
    two pieces of one lesion that stop and restart a slice apart overlap (as stacking extends them)."""
    b = t.box_3d()
    return np.array(list(b.box_xyxy_px) + [b.z_range[0] - 1, b.z_range[1] + 1])


def dedupe(tracklets: list[tuple[str, Tracklet]], min_iou: float = 0.3) -> list[tuple[str, Tracklet]]:
    """Drop tracklets whose one-slice-extended 3D box overlaps an earlier one's of the same volume
    (3D IoU >= min_iou)."""
    kept: dict[str, list[np.ndarray]] = {}
    out = []
    for key, t in tracklets:
        box = _extended_box(t)
        if _overlaps_any(box, kept.get(key, []), min_iou):
            continue
        kept.setdefault(key, []).append(box)
        out.append((key, t))
    return out


def duplicates_of(candidates: list[tuple[str, Tracklet]], known: list[tuple[str, Tracklet]],
                  min_iou: float = 0.3) -> np.ndarray:
    """(N,) bool: the candidate overlaps a known tracklet of its volume as ``dedupe`` defines it."""
    boxes: dict[str, list[np.ndarray]] = {}
    for key, t in known:
        boxes.setdefault(key, []).append(_extended_box(t))
    return np.array([_overlaps_any(_extended_box(t), boxes.get(key, []), min_iou) for key, t in candidates],
                    dtype=bool)


def covers_marks(rows: list[ProposalRow], marks: dict[str, list[RecistMark]], iou: float = 0.5) -> np.ndarray:
    """(N,) bool: proposals that cover one of their volume's RECIST ``marks``, or are a piece of one
    that does.

    Why: on V_M the 95% threshold is measured without these. In V_H they would be P_H^R or marked
    pieces, never harvested; counted, lesions the LPG trained on (every mark) would lift V_M's
    precision above that of the new lesions the threshold is meant to certify.
    """
    out = np.zeros(len(rows), dtype=bool)
    by_volume: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        by_volume.setdefault(row.volume, []).append(i)
    for key, idx in by_volume.items():
        tracklets = [rows[i].tracklet for i in idx]
        hits = match_known(tracklets, [m.slice_box() for m in marks.get(key, [])], iou)
        marked = [(key, t) for t, hit in zip(tracklets, hits) if hit]
        pieces = duplicates_of([(key, t) for t in tracklets], marked) if marked else np.zeros(len(idx), dtype=bool)
        out[idx] = hits | pieces
    return out


def calibration_volumes(fully_annotated: list[str], n: int, seed: int) -> list[str]:
    """``n`` V_M volumes drawn with ``seed`` (sorted), to be kept out of LPG training; [] for n = 0."""
    if n <= 0:
        return []
    if n >= len(fully_annotated):
        raise ConfigError(f"harvest.calibration_volumes: {n} of the {len(fully_annotated)} fully annotated volumes "
                          "would leave none for the LPG; use fewer (0: all of V_M trains the LPG, as in the paper)")
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(sorted(fully_annotated), n, replace=False).tolist())


class Harvest:
    """One harvest run in ``run_dir`` over a DeepLesion-layout dataset."""

    def __init__(self, data: str | Path, run_dir: str | Path, preset: Preset, fully_annotated: str | None = None,
                 holdout: str | None = None, device: str = "cpu", progress: bool = True):
        self.data = Path(data)
        self.run = Path(run_dir)
        self.preset = preset
        self.device = device
        self.progress = progress
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError("--device cuda: no CUDA device is available; use --device cpu")
        exponents = preset.harvest.fusion_exponents
        if not exponents or any(w < 0 for w in exponents):  # checked now, not after hours of training
            raise ConfigError(f"harvest.fusion_exponents: expected one or more exponents >= 0 "
                              f"(1.0 is the paper's s_g * s_c), got {list(exponents)}")
        self.inputs: Partition = resolve_partition(self.data, fully_annotated, holdout, need_holdout=True)
        # checked before the run folder is written, so a corrected setting can use the same --out
        self.calibration = calibration_volumes(list(self.inputs.fully_annotated), preset.harvest.calibration_volumes,
                                               preset.lpg_train.seed)
        self.run.mkdir(parents=True, exist_ok=True)
        self.ledger = Ledger(self.run / "ledger.sqlite")
        # --rounds may grow between runs of one harvest; every other setting must match
        fingerprint = settings_fingerprint(
            dataclasses.replace(preset, synth=None, name="", harvest=dataclasses.replace(preset.harvest, rounds=0)),
            str(self.data.resolve()), fully_annotated, holdout)
        stored = self.ledger.get_meta("fingerprint")
        if stored is not None and stored != fingerprint:
            raise ConfigError(f"{self.run}: this folder holds a harvest with other settings or data; "
                              "use a new --out folder (or delete it to start over)")
        if stored is None:
            self.ledger.set_meta("fingerprint", fingerprint)
            self.ledger.set_meta("data", str(self.data.resolve()))
            self.ledger.set_meta("holdout_file", self.inputs.holdout_file)
            self.ledger.set_meta("holdout_volumes", json.dumps(list(self.inputs.holdout)))
            self.ledger.set_meta("elapsed_s", "0")
            self.ledger.set_volumes(list(self.inputs.fully_annotated), self.inputs.harvest, list(self.inputs.holdout))
        dump_config(preset, self.run / "config.yaml")
        self.cache = PreparedCache(default_cache_dir(self.data), preset.preprocess)

    # --- the rounds --------------------------------------------------------------------------------
    def run_rounds(self, rounds: int) -> None:
        started = time.time()
        try:
            for r in range(1, rounds + 1):
                stop = self.ledger.get_meta("stopped_after_round")
                if stop is not None and int(stop) < r:
                    log.info("harvest stopped after round %s (too few new lesions)", stop)
                    break
                self.run_round(r)
                info = self.ledger.step_info(r, "mine")
                if info["n_new"] < self.preset.harvest.min_new_lesions and r < rounds:
                    self.ledger.set_meta("stopped_after_round", str(r))
                    log.info("round %d added %d new lesions (< %d): stopping", r, info["n_new"],
                             self.preset.harvest.min_new_lesions)
                    break
            self.write_outputs()
        finally:
            total = float(self.ledger.get_meta("elapsed_s") or 0) + time.time() - started
            self.ledger.set_meta("elapsed_s", f"{total:.1f}")

    def run_round(self, r: int) -> None:
        for step in STEPS:
            if self.ledger.step_info(r, step) is None:
                if self.progress:
                    tqdm.write(f"round {r}: {step}")
                getattr(self, f"_step_{step}")(r)
        if r == 1 and self.preset.harvest.lpc_variants and self.ledger.step_info(r, "lpc_variants") is None:
            self._step_lpc_variants(r)

    def round_dir(self, r: int) -> Path:
        return self.run / f"round_{r}"

    # --- step 1: LPG --------------------------------------------------------------------------------
    def lpg_fully_annotated_file(self) -> str | None:
        """The V_M labels the LPG trains on: all of them, or (with calibration volumes) a file in the
        run folder without the calibration volumes, which the LPG then treats as harvest volumes."""
        if not self.calibration:
            return self.inputs.fully_annotated_file
        path = self.run / "lpg_fully_annotated.pkl"
        if not path.is_file():
            held = set(self.calibration)
            write_slice_boxes(path, {k: v for k, v in self.inputs.fully_annotated.items() if k not in held})
        return str(path)

    def _step_lpg(self, r: int) -> None:
        out = self.round_dir(r) / "lpg"
        fully_annotated = self.lpg_fully_annotated_file()
        if r == 1:
            train_lpg(self.data, out, self.preset, self.device, fully_annotated=fully_annotated,
                      progress=self.progress)
        else:
            positives, negatives = self.pooled_examples(r - 1)
            pos_path, neg_path = self.round_dir(r) / "lpg_positives.pkl", self.round_dir(r) / "lpg_hard_negatives.pkl"
            write_tracklets(pos_path, _group(positives))
            write_tracklets(neg_path, _group(negatives))
            h = self.preset.harvest
            t = self.preset.lpg_train
            finetune = dataclasses.replace(self.preset, lpg_train=dataclasses.replace(
                t, epochs=h.finetune_epochs, iters_per_epoch=h.finetune_iters_per_epoch, lr=t.lr * h.finetune_lr_factor,
                warmup_iters=min(t.warmup_iters, 50), seed=t.seed + r))
            train_lpg(self.data, out, finetune, self.device, fully_annotated=fully_annotated,
                      extra_positives=str(pos_path), hard_negatives=str(neg_path),
                      init=str(self.round_dir(r - 1) / "lpg" / "best.pt"), progress=self.progress)
        with self.ledger.transaction() as db:
            self.ledger.finish_step(db, r, "lpg", {"checkpoint": str(out / "best.pt")})

    def pooled_examples(self, up_to_round: int) -> tuple[list[tuple[str, Tracklet]], list[tuple[str, Tracklet]]]:
        """Positives (P_M^R, P_H^R, P_H^+) and hard negatives (P_M^-, P_H^-) of rounds 1..up_to_round,
        later rounds first, duplicates removed; a negative that overlaps a positive is dropped.

        P_M^- is every unmatched V_M proposal down to t_G, hundreds per volume; only its hard ones
        (the P_H^- rule: objectness >= hard_min_objectness, plus the top few per volume) feed the HNSL.
        """
        positives, negatives = [], []
        for r in range(up_to_round, 0, -1):
            for row in self.ledger.proposals(r, statuses=POSITIVE):
                positives.append((row.volume, row.tracklet))
            negatives += self.hard_negatives(r)
        held = set(self.calibration)  # what the LPG must not learn from
        positives = dedupe([item for item in positives if item[0] not in held])
        negatives = [item for item in negatives if item[0] not in held]
        negatives = [item for item in dedupe(negatives + positives, 0.1) if item not in positives]
        return positives, negatives

    def threshold_rows(self, rows: list[ProposalRow]) -> list[ProposalRow]:
        """The V_M proposals that set the threshold and the fusion exponent: the calibration volumes', if any."""
        held = set(self.calibration)
        return [row for row in rows if row.volume in held] if held else rows

    def hard_negatives(self, r: int) -> list[tuple[str, Tracklet]]:
        """P_H^- of round r, and the hard part of its P_M^- (the P_H^- rule applied to V_M)."""
        h = self.preset.harvest
        negatives = [(row.volume, row.tracklet) for row in self.ledger.proposals(r, statuses=("hard_negative",))]
        fa_negative = self.ledger.proposals(r, statuses=("fa_negative",))
        _, hard = mine([row.volume for row in fa_negative], np.array([row.objectness for row in fa_negative]),
                       np.zeros(len(fa_negative)), np.inf, h.hard_min_objectness, h.hard_top_per_volume)
        return negatives + [(row.volume, row.tracklet) for row, is_hard in zip(fa_negative, hard) if is_hard]

    # --- step 2: scan -------------------------------------------------------------------------------
    def _step_scan(self, r: int) -> None:
        keys = list(self.inputs.fully_annotated) + self.inputs.harvest
        out = self.round_dir(r) / "proposals.pkl"
        results = propose(self.data, self.round_dir(r) / "lpg" / "best.pt", out, stack=self.preset.stack,
                          scan=self.preset.scan, device=self.device, progress=self.progress, keys=keys)
        with self.ledger.transaction() as db:
            n = self.ledger.add_proposals(db, r, results)
            self.ledger.finish_step(db, r, "scan", {"proposals": n})

    # --- step 3: verify -----------------------------------------------------------------------------
    def _step_verify(self, r: int) -> None:
        iou = self.preset.harvest.verify_iou
        updates = []
        by_volume: dict[str, list[ProposalRow]] = {}
        for row in self.ledger.proposals(r):
            by_volume.setdefault(row.volume, []).append(row)
        for key, rows in by_volume.items():
            tracklets = [row.tracklet for row in rows]
            if key in self.inputs.fully_annotated:
                hits = match_known(tracklets, self.inputs.fully_annotated[key], iou)
                updates += [(key, row.idx, "fa_lesion" if hit else "fa_negative") for row, hit in zip(rows, hits)]
            else:
                hits = match_known(tracklets, [m.slice_box() for m in self.inputs.marks.get(key, [])], iou)
                updates += [(key, row.idx, "recist") for row, hit in zip(rows, hits) if hit]
        with self.ledger.transaction() as db:
            self.ledger.set_statuses(db, r, updates)
            counts = {s: sum(1 for u in updates if u[2] == s) for s in ("fa_lesion", "fa_negative", "recist")}
            self.ledger.finish_step(db, r, "verify", counts)

    # --- steps 4-5: LPC -----------------------------------------------------------------------------
    def patches(self, rows: list[ProposalRow], cfg=None) -> torch.Tensor:
        """The LPC input of each row's proposal, float16 (N, C, patch_px, patch_px) (a cube for the 3D
        variant), extracted as ``cfg`` (default the preset's LPC settings) says."""
        cfg = cfg or self.preset.lpc
        by_volume: dict[str, list[int]] = {}
        for i, row in enumerate(rows):
            by_volume.setdefault(row.volume, []).append(i)
        parts: list[torch.Tensor | None] = [None] * len(rows)
        for key, members in tqdm(by_volume.items(), desc="LPC patches", unit="vol", disable=not self.progress,
                                 leave=False):
            pv = self.cache.get(self.inputs.source, key)
            patches = extract_patches(pv, [rows[i].tracklet for i in members], cfg)
            for j, i in enumerate(members):
                parts[i] = patches[j].half()
        if not rows:
            return torch.zeros(0)
        return torch.stack(parts)  # type: ignore[arg-type]

    def folds(self) -> list[list[str]]:
        k = max(1, self.preset.lpc.folds)
        keys = sorted(self.inputs.fully_annotated)
        return [keys[i::k] for i in range(k)]

    def training_rows(self, r: int) -> tuple[list[ProposalRow], list[ProposalRow]]:
        """(V_M proposals P_M^R + P_M^-, positives of V_H: P_H^R).

        With fewer than ``lpc.min_positives`` verified proposals, the marks of V_H and the complete
        labels of V_M join the positives as one-slice proposals (status ``recist``)."""
        vm = self.ledger.proposals(r, statuses=("fa_lesion", "fa_negative"))
        vh = self.ledger.proposals(r, statuses=("recist",))
        if sum(row.status == "fa_lesion" for row in vm) + len(vh) < self.preset.lpc.min_positives:
            from lesion_harvester.io.annotations import single_slice_tracklet

            known = [(k, b) for k, boxes in self.inputs.fully_annotated.items() for b in boxes]
            known += [(k, m.slice_box()) for k, ms in self.inputs.marks.items() for m in ms]
            vh = vh + [ProposalRow(r, k, -1 - i, single_slice_tracklet(b.z_index, b.box_xyxy_px, 1.0), 1.0, None, None,
                                   "recist") for i, (k, b) in enumerate(known)]
        return vm, vh

    def _step_lpc(self, r: int) -> None:
        vm_rows, vh_rows = self.training_rows(r)
        vm_x, vh_x = self.patches(vm_rows), self.patches(vh_rows)
        vm_y = np.array([row.status == "fa_lesion" for row in vm_rows], dtype=np.int64)
        for f, fold in enumerate(self.folds()):
            path = self.round_dir(r) / "lpc" / f"fold{f}.pt"
            if path.is_file():
                continue
            held = set(fold)
            train_idx = [i for i, row in enumerate(vm_rows) if row.volume not in held or len(self.folds()) == 1]
            x = torch.cat([vm_x[train_idx], vh_x]).float()
            y = np.concatenate([vm_y[train_idx], np.ones(len(vh_rows), dtype=np.int64)])
            model = train_lpc(x, y, self.preset.lpc, self.device, seed=self.preset.lpc.seed + 100 * r + f,
                              progress=self.progress, desc=f"round {r} LPC fold {f + 1}/{len(self.folds())}")
            save_lpc(path, model, self.preset.lpc, held_out=sorted(held))
        with self.ledger.transaction() as db:
            self.ledger.finish_step(db, r, "lpc", {"positives": int(vm_y.sum()) + len(vh_rows),
                                                   "negatives": int((vm_y == 0).sum()), "folds": len(self.folds())})

    def classifiable(self, rows: list[ProposalRow], cfg=None) -> list[ProposalRow]:
        """Proposals the LPC scores: s_g >= min_objectness, at most max_per_volume per volume (by s_g)."""
        cfg = cfg or self.preset.lpc
        by_volume: dict[str, list[ProposalRow]] = {}
        for row in rows:
            if row.objectness >= cfg.min_objectness:
                by_volume.setdefault(row.volume, []).append(row)
        out = []
        for members in by_volume.values():
            out += sorted(members, key=lambda row: (-row.objectness, row.idx))[: cfg.max_per_volume]
        return out

    def _step_classify(self, r: int) -> None:
        models = [load_lpc(self.round_dir(r) / "lpc" / f"fold{f}.pt", self.device)[0] for f in range(len(self.folds()))]
        probability: dict[tuple[str, int], float] = {}
        # V_M: out of fold
        for f, fold in enumerate(self.folds()):
            rows = self.classifiable(self.ledger.proposals(r, volumes=fold, statuses=("fa_lesion", "fa_negative")))
            if rows:
                scores = predict_lpc(models[f], self.patches(rows).float(), device=self.device)
                probability.update({(row.volume, row.idx): float(s) for row, s in zip(rows, scores)})
        # V_H candidates: the mean of the fold models
        rows = self.classifiable(self.ledger.proposals(r, statuses=("candidate",)))
        for start in range(0, len(rows), 2000):  # in chunks, to bound the patches in memory
            chunk = rows[start:start + 2000]
            x = self.patches(chunk).float()
            scores = np.mean([predict_lpc(m, x, device=self.device) for m in models], axis=0)
            probability.update({(row.volume, row.idx): float(s) for row, s in zip(chunk, scores)})
        vm = self.ledger.proposals(r, statuses=("fa_lesion", "fa_negative"))
        chooser = self.threshold_rows(vm)
        s_c_vm = np.array([probability.get((row.volume, row.idx), 0.0) for row in chooser])
        exponent, table = choose_fusion_exponent(
            np.array([row.objectness for row in chooser]), s_c_vm,
            np.array([row.status == "fa_lesion" for row in chooser]),
            self.preset.harvest.fusion_exponents, self.preset.harvest.precision)
        updates = []
        for row in vm + self.ledger.proposals(r, statuses=("candidate",)):
            s_c = probability.get((row.volume, row.idx), 0.0)
            updates.append((row.volume, row.idx, s_c, float(fused_score(row.objectness, s_c, exponent))))
        with self.ledger.transaction() as db:
            self.ledger.set_scores(db, r, updates)
            self.ledger.finish_step(db, r, "classify", {"classified": len(probability), "fusion_exponent": exponent,
                                                        "fusion_choices": table})

    def _step_lpc_variants(self, r: int) -> None:
        """Round 1 only: train the axial 2D and the 3D LPC on the same examples (the paper's Fig. 5b) and
        score the holdout candidates with them."""
        vm_rows, vh_rows = self.training_rows(r)
        holdout = list(self.inputs.holdout)
        targets = self.classifiable(self.ledger.proposals(r, volumes=holdout, statuses=(
            "candidate", "harvested", "hard_negative", "rejected")))
        result = {}
        patch_px = self.preset.lpc.patch_px
        for variant in ("axial", "3d"):
            cfg = dataclasses.replace(self.preset.lpc, variant=variant, pretrained_path=None,
                                      epochs=self.preset.harvest.variant_epochs or self.preset.lpc.epochs,
                                      patch_px=patch_px if variant != "3d" else max(16, patch_px // 2))
            x = torch.cat([self.patches(vm_rows, cfg), self.patches(vh_rows, cfg)]).float()
            y = np.concatenate([[row.status == "fa_lesion" for row in vm_rows], np.ones(len(vh_rows))]).astype(np.int64)
            model = train_lpc(x, y, cfg, self.device, seed=cfg.seed + 7, progress=self.progress, desc=f"LPC {variant}")
            scores = predict_lpc(model, self.patches(targets, cfg).float(), device=self.device) if targets else []
            result[variant] = {f"{row.volume}#{row.idx}": float(s) for row, s in zip(targets, scores)}
        path = self.round_dir(r) / "lpc_variants.json"
        path.write_text(json.dumps(result))
        with self.ledger.transaction() as db:
            self.ledger.finish_step(db, r, "lpc_variants", {"file": str(path)})

    # --- step 6: mine -------------------------------------------------------------------------------
    def _step_mine(self, r: int) -> None:
        h = self.preset.harvest
        vm = self.threshold_rows(self.ledger.proposals(r, statuses=("fa_lesion", "fa_negative")))
        vm_score = np.array([row.score or 0.0 for row in vm])
        vm_lesion = np.array([row.status == "fa_lesion" for row in vm], dtype=bool)
        original = self.inputs.dataset.marks(sorted({row.volume for row in vm}))
        new_in_vm = ~covers_marks(vm, original, h.verify_iou)
        threshold = precision_threshold(vm_score[new_in_vm], vm_lesion[new_in_vm], h.precision)
        above = new_in_vm & (vm_score >= threshold)
        vm_tp, vm_fp = int((above & vm_lesion).sum()), int((above & ~vm_lesion).sum())
        # a piece of a marked lesion (it missed the mark's slice, so verification left it a candidate)
        # is neither a new lesion nor a negative
        marked = [(row.volume, row.tracklet) for row in self.ledger.proposals(r, statuses=("recist",))]
        candidates = self.ledger.proposals(r, statuses=("candidate",))
        known = duplicates_of([(row.volume, row.tracklet) for row in candidates], marked)
        pieces = [(row.volume, row.idx, "marked_piece") for row, k in zip(candidates, known) if k]
        candidates = [row for row, k in zip(candidates, known) if not k]
        harvested, hard = mine([row.volume for row in candidates], np.array([row.objectness for row in candidates]),
                               np.array([row.score or 0.0 for row in candidates]), threshold,
                               h.hard_min_objectness, h.hard_top_per_volume)
        updates = pieces + [(row.volume, row.idx, "harvested" if hv else "hard_negative" if hn else "rejected")
                            for row, hv, hn in zip(candidates, harvested, hard)]
        earlier = [(row.volume, row.tracklet)
                   for q in range(1, r) for row in self.ledger.proposals(q, statuses=("harvested",))]
        new = [(row.volume, row.tracklet) for row, hv in zip(candidates, harvested) if hv]
        n_new = len(dedupe(earlier + dedupe(new))) - len(dedupe(earlier))
        with self.ledger.transaction() as db:
            self.ledger.set_statuses(db, r, updates)
            self.ledger.finish_step(db, r, "mine", {
                "threshold": threshold if np.isfinite(threshold) else None, "n_harvested": int(harvested.sum()),
                "n_hard_negatives": int(hard.sum()), "n_fa_negative": self.ledger.count(r, "fa_negative"),
                "n_new": int(n_new), "n_marked_pieces": len(pieces),
                # the V_M evidence behind the threshold: new lesions and false positives above it
                "vm_new_lesions_above": vm_tp, "vm_false_positives_above": vm_fp,
                "precision_lower_bound": round(precision_lower_bound(vm_tp, vm_fp, 0.95), 4)})
        self._write_round_outputs(r)

    def _write_round_outputs(self, r: int) -> None:
        rows = self.ledger.proposals(r, statuses=("harvested",))
        write_tracklets(self.round_dir(r) / "harvested.pkl",
                        _group([(row.volume, scaled_tracklet(row.tracklet, row.lpc or 0.0)) for row in rows]))
        write_tracklets(self.round_dir(r) / "hard_negatives.pkl", _group(self.hard_negatives(r)))

    # --- outputs ---------------------------------------------------------------------------------------
    def write_outputs(self) -> None:
        from lesion_harvester.harvest.outputs import write_harvest_outputs

        write_harvest_outputs(self)


def _group(items: list[tuple[str, Tracklet]]) -> dict[str, list[Tracklet]]:
    out: dict[str, list[Tracklet]] = {}
    for key, t in items:
        out.setdefault(key, []).append(t)
    return out
