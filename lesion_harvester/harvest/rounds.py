"""Harvest rounds (paper Fig. 2): train or fine-tune the LPG, scan, verify, train the LPC, classify, mine.

This module only composes the steps of :mod:`lesion_harvester.harvest.steps`: each round reads a
step's inputs from the ledger, calls the step, and records its result in the ledger in one
transaction, so that rerunning continues after the last finished step. Long steps resume inside
themselves too: LPG training from its ``last.pt``, scanning from its partial folder, LPC
training fold by fold.

Round 1 trains the LPG on the RECIST marks and the complete labels of V_M. Round i > 1 fine-tunes
the previous LPG on the highest-objectness slice of every proposal in P_M^R, P_H^R and P_H^+
(positives) and P_M^-, P_H^- (hard negatives, through the HNSL), pooled over the earlier rounds.
The LPC is trained in K folds over V_M: each V_M proposal is scored by the model that did not see
its volume (so the 95%-precision threshold is not set on training data), and V_H proposals by the
mean of the fold models. With ``harvest.calibration_volumes`` some V_M volumes are kept out of LPG
training too, and the threshold is set on them alone. With ``harvest.calibration_marks`` some V_H
volumes' RECIST marks train no LPG and no LPC: they tell how often the harvest finds a lesion, from
which the precision above a threshold is estimated (``harvest.threshold``, harvest/precision.py).

After each scan the round's LPG's operating point (``detect --fp-per-volume``) is measured again on
every volume with complete labels that no LPG learnt them from (V_H^test, and the validation volumes
where their labels are complete), more than the training's validation volumes alone.

Each round first fixes the reviewers' verdicts it uses (``lesion-harvester review``;
:mod:`lesion_harvester.harvest.reviews`): volumes marked fully annotated join V_M for this round on,
accepted and drawn lesions join the fine-tuning positives, rejected proposals its hard negatives.

Under torchrun the LPG steps (training, scanning) run on every rank and share their work
(:mod:`lesion_harvester.distributed`); the other steps, and every write to the ledger and the run
folder, happen on the main rank while the others wait for it at a barrier.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lesion_harvester.config import Preset, Table3Config, dump_config, settings_fingerprint
from lesion_harvester.dataset.prepared_cache import PreparedCache
from lesion_harvester.dataset.roles import Partition, resolve_partition
from lesion_harvester.device import resolve_device
from lesion_harvester.distributed import ALONE, Distributed
from lesion_harvester.errors import ConfigError
from lesion_harvester.harvest import steps
from lesion_harvester.harvest.ledger import Ledger, ProposalRow
from lesion_harvester.harvest.mine import hard_negatives_of, mine_round
from lesion_harvester.harvest.outputs import (
    HarvestedLesion,
    completed_annotations,
    harvested_lesions,
    write_harvest_outputs,
    write_round_outputs,
)
from lesion_harvester.harvest.precision import MarksEvidence, mark_rates, marks_evidence
from lesion_harvester.harvest.reviews import ReviewedLabels, reviews_in_ledger, with_reviews
from lesion_harvester.harvest.verify import FA_LESION, FA_NEGATIVE, RECIST, verify_proposals
from lesion_harvester.io.annotations import write_slice_boxes, write_tracklets
from lesion_harvester.io.logs import log_to_file
from lesion_harvester.lpc.api import LPCExamples, train_lpc_folds
from lesion_harvester.lpc.train import load_lpc
from lesion_harvester.lpg.checkpoint import checkpoint_operating_point, store_operating_point
from lesion_harvester.lpg.propose import propose
from lesion_harvester.lpg.train import describe_operating_point, operating_point_of, train_lpg
from lesion_harvester.paths import RunLayout, cache_dir_for
from lesion_harvester.preprocessing import PreparedVolume
from lesion_harvester.storage.atomic import atomic_write_text, ensure_folder
from lesion_harvester.storage.locks import OutputLock
from lesion_harvester.structures import Box3D, RecistMark, Tracklet, group_by_volume

log = logging.getLogger(__name__)

VM_STATUSES = (FA_LESION, FA_NEGATIVE)


@dataclass
class HarvestRun:
    """An opened harvest run folder and what its steps read: the data and its partition, the
    settings, the ledger, the prepared-volume cache."""

    data: Path
    layout: RunLayout
    preset: Preset
    inputs: Partition
    ledger: Ledger
    cache: PreparedCache
    calibration: list[str]  # V_M volumes kept out of LPG training, on which alone the threshold is set
    held_out_marks: list[str]  # V_H volumes whose marks no model trains on (harvest.calibration_marks)
    device: str = "cpu"
    progress: bool = True
    dist: Distributed = ALONE  # this process's rank under torchrun
    given: Partition | None = None  # the partition before reviews (``inputs`` is it with the round's reviews)
    reviewed: ReviewedLabels = field(default_factory=ReviewedLabels)  # the verdicts the current round uses
    lock: OutputLock | None = None  # the run folder's lock, held by the main rank until the run is closed
    counted_until: float | None = None  # time.time() up to which the ledger's elapsed_s counts this process

    def count_time(self) -> None:
        """Add this process's time since it was last counted to the ledger's ``elapsed_s`` (main rank).
        Called after every step, so a killed harvest loses only its unfinished step's time."""
        now = time.time()
        if self.dist.is_main and self.counted_until is not None:
            total = float(self.ledger.get_meta("elapsed_s") or 0) + now - self.counted_until
            self.ledger.set_meta("elapsed_s", f"{total:.1f}")
        self.counted_until = now

    def close(self) -> None:
        """Close the ledger and release the run folder."""
        self.ledger.close()
        if self.lock is not None:
            self.lock.release()

    @property
    def unseen(self) -> set[str]:
        """Volumes whose labels no LPG or LPC may learn from (validation volumes held out of V_H too)."""
        return set(self.calibration) | set(self.held_out_marks) | set(self.inputs.validation)

    def volume(self, key: str) -> PreparedVolume:
        return self.cache.get(self.inputs.source, key)

    def threshold_rows(self, rows: list[ProposalRow]) -> list[ProposalRow]:
        """The V_M proposals that set the threshold and the fusion exponent: the calibration volumes', if any."""
        held = set(self.calibration)
        return [row for row in rows if row.volume in held] if held else rows

    def marks_of(self, rows: list[ProposalRow]) -> dict[str, list[RecistMark]]:
        """The original RECIST marks of the volumes of ``rows`` (V_M's, for the threshold rows)."""
        return self.inputs.dataset.marks(sorted({row.volume for row in rows}))

    def known_lesions(self, *proposals: list[tuple[str, Tracklet]]) -> dict[str, list[Box3D]]:
        """Where this round's known lesions lie, per volume (:func:`steps.known_lesions`): V_H's RECIST marks,
        V_M's complete labels, the reviewers' verified lesions and the given ``proposals`` on lesions.
        No hard negative may touch them."""
        return steps.known_lesions(self.inputs, self.reviewed.positives + [item for g in proposals for item in g])

    def harvested_before(self, r: int) -> list[tuple[str, Tracklet]]:
        """(volume, tracklet) of every lesion harvested in rounds 1 to ``r`` - 1."""
        return [(row.volume, row.tracklet) for q in range(1, r)
                for row in self.ledger.proposals(q, statuses=("harvested",))]

    def folds(self) -> list[list[str]]:
        return steps.lpc_folds(list(self.inputs.fully_annotated), self.preset.lpc.folds)

    def reviewed_up_to(self, up_to: int) -> ReviewedLabels:
        """The verdicts with ids <= ``up_to`` read into labels (:mod:`lesion_harvester.harvest.reviews`)."""
        return reviews_in_ledger(self.ledger, self.given.dataset.marks, up_to)


def open_run(data: str | Path, run_dir: str | Path, preset: Preset, fully_annotated: str | None = None,
             holdout: str | None = None, device: str = "auto", progress: bool = True,
             dist: Distributed = ALONE, cache_dir: str | Path | None = None, lock: bool = False) -> HarvestRun:
    """Open (or create) the run folder of a harvest of ``data``; a folder holding a harvest with
    other settings or data is refused. Every check that can fail runs before anything is written.
    Under torchrun the main rank creates the folder and the ledger before the others open them.
    ``lock``: hold the run folder's lock (:mod:`lesion_harvester.storage.locks`) until :meth:`HarvestRun.close`,
    as :func:`harvest` does; a folder locked by another process is refused (its holder named)."""
    data, layout = Path(data), RunLayout(Path(run_dir))
    device = dist.device(resolve_device(device))
    dist.batch_share(preset.lpg_train.batch_size)  # every round's LPG splits its batches among the ranks
    inputs = resolve_partition(data, fully_annotated, holdout, need_holdout=True)
    if inputs.validation_held_out:
        log.warning("LPG validation: %s", inputs.validation_source)
    calibration, held_out_marks = steps.withheld_volumes(inputs, inputs.holdout, preset)
    if not dist.is_main:  # the main rank has created and checked the folder (below)
        dist.barrier()
        cache = PreparedCache(cache_dir_for(data, cache_dir), preset.preprocess)
        ledger = Ledger(layout.ledger)
        calibration, held_out_marks = ledger.withheld()  # what the main rank recorded
        return HarvestRun(data, layout, preset, inputs, ledger, cache, calibration, held_out_marks,
                          device, False, dist, inputs)  # no progress bars but the main rank's
    # a second harvest of this folder refuses here, after the checks and before anything is written
    # (taking the lock makes the folder)
    held = OutputLock(layout.lock, layout.root).acquire() if lock else None
    try:
        return _open_ledger(data, layout, preset, inputs, calibration, held_out_marks, fully_annotated, holdout,
                            device, progress, dist, cache_dir, held)
    except BaseException:
        if held is not None:
            held.release()
        raise


def harvest_fingerprint(preset: Preset, data: Path, fully_annotated: str | None, holdout: str | None) -> str:
    """What a harvest run folder must be resumed with: its data and every setting that shapes the
    harvest. Not the synthetic data's settings, the preset's name, --rounds (it may grow between
    runs of one harvest) nor Table III's (detectors trained on the finished harvest)."""
    return settings_fingerprint(
        dataclasses.replace(preset, synth=None, name="", harvest=dataclasses.replace(preset.harvest, rounds=0),
                            table3=Table3Config()),
        str(data.resolve()), fully_annotated, holdout)


def _open_ledger(data: Path, layout: RunLayout, preset: Preset, inputs: Partition, calibration: list[str],
                 held_out_marks: list[str], fully_annotated: str | None, holdout: str | None, device: str,
                 progress: bool, dist: Distributed, cache_dir: str | Path | None,
                 lock: OutputLock | None) -> HarvestRun:
    """The main rank's part of :func:`open_run`: the ledger, created or checked."""
    ensure_folder(layout.root)
    ledger = Ledger(layout.ledger)
    fingerprint = harvest_fingerprint(preset, data, fully_annotated, holdout)
    stored = ledger.get_meta("fingerprint")
    if stored is not None and stored != fingerprint:
        ledger.close()
        raise ConfigError(f"{layout.root}: this folder holds a harvest with other settings or data; "
                          "use a new --out folder (or delete it to start over)")  # torchrun stops the others
    if stored is None:
        ledger.set_meta("fingerprint", fingerprint)
        ledger.set_meta("data", str(data.resolve()))
        # absolute, so that the report can be rebuilt from any working folder
        ledger.set_meta("holdout_file", str(Path(inputs.holdout_file).resolve()) if inputs.holdout_file else "")
        ledger.set_meta("holdout_volumes", json.dumps(list(inputs.holdout)))
        ledger.set_meta("elapsed_s", "0")
        ledger.set_volumes(list(inputs.fully_annotated), inputs.harvest, list(inputs.holdout))
    if ledger.withheld() is None:  # new, or a folder older than the record (the fingerprint matched: the same draw)
        ledger.set_withheld(calibration, held_out_marks)
    # a run goes on with the volumes it started with, even where a later version would draw others
    calibration, held_out_marks = ledger.withheld()
    if ledger.get_meta("fully_annotated_file") is None:  # the fingerprint matched: the same file as at the start
        ledger.set_meta("fully_annotated_file", str(Path(fully_annotated).resolve()) if fully_annotated else "")
    dump_config(preset, layout.config)
    cache = PreparedCache(cache_dir_for(data, cache_dir), preset.preprocess)
    dist.barrier()
    return HarvestRun(data, layout, preset, inputs, ledger, cache, calibration, held_out_marks, device, progress, dist,
                      inputs, lock=lock)


def run_harvest(run: HarvestRun, rounds: int) -> None:
    """Run (or continue) rounds 1..``rounds``, stopping early when a round adds too few new lesions,
    then write the deliverables."""
    run.counted_until = time.time()
    ledger = run.ledger
    try:
        for r in range(1, rounds + 1):
            stop = ledger.get_meta("stopped_after_round")
            if stop is not None and int(stop) < r:
                log.info("harvest stopped after round %s (too few new lesions)", stop)
                break
            run_round(run, r)
            info = ledger.step_info(r, "mine")
            if info["n_new"] < run.preset.harvest.min_new_lesions and r < rounds:
                if run.dist.is_main:
                    ledger.set_meta("stopped_after_round", str(r))
                log.info("round %d added %d new lesions (< %d): stopping", r, info["n_new"],
                         run.preset.harvest.min_new_lesions)
                break
        if run.dist.is_main:
            run.count_time()  # before the report, which shows it
            write_outputs(run)
    finally:
        run.count_time()


def run_round(run: HarvestRun, r: int) -> None:
    """The steps of round ``r`` not yet finished, in order (round 1 also trains the Fig. 5b variants)."""
    use_reviews(run, r)
    todo = list(ROUND_STEPS.items())
    if r == 1 and run.preset.harvest.lpc_variants:
        todo.append(("lpc_variants", _lpc_variants))
    for name, step in todo:
        if run.ledger.step_info(r, name) is None:
            log.info("round %d: %s", r, name)
            if name in SHARED_STEPS or run.dist.is_main:
                step(run, r)
            run.count_time()
            run.dist.barrier()  # every rank sees the step's result in the ledger before the next


def use_reviews(run: HarvestRun, r: int) -> None:
    """Fix the verdicts round ``r`` uses (the main rank records the last one's id as the round's
    ``reviews`` step, before the round's first step) and apply them: ``run.inputs`` gains the volumes
    reviewed as fully annotated, ``run.reviewed`` holds the verified positives and negatives. A round
    begun before this step existed uses no verdicts."""
    ledger, reviewed = run.ledger, None
    if run.dist.is_main and ledger.step_info(r, "reviews") is None and ledger.step_info(r, "lpg") is None:
        up_to = ledger.last_verdict_id()
        reviewed = run.reviewed_up_to(up_to)
        harvest = set(run.given.harvest)
        joining = [k for k in reviewed.fully_annotated if k in harvest]
        with ledger.transaction() as db:
            ledger.set_roles(db, joining, "fully_annotated")
            ledger.finish_step(db, r, "reviews", {"up_to": up_to, **reviewed.counts(), "joined_v_m": joining})
        if up_to:
            log.info("round %d: reviewers' verdicts up to #%d: %d volumes join V_M, %d verified lesions, "
                     "%d rejected proposals", r, up_to, len(joining), len(reviewed.positives), len(reviewed.negatives))
    run.dist.barrier()
    if reviewed is None:  # read what the round recorded (another rank, or a resumed round)
        info = ledger.step_info(r, "reviews")
        reviewed = run.reviewed_up_to(0 if info is None else info["up_to"])
    run.reviewed = reviewed
    run.inputs = with_reviews(run.given, run.reviewed)


# --- each step: inputs from the ledger, the step, its result into the ledger ------------------------------
def lpg_fully_annotated_file(run: HarvestRun, r: int) -> str | None:
    """The V_M labels the LPG trains on: all of them, or (with calibration volumes) a file in the
    run folder without the calibration volumes, which the LPG then treats as harvest volumes; with
    volumes reviewed as fully annotated, the round's own file of V_M with them."""
    reviewed = run.inputs.fully_annotated != run.given.fully_annotated
    if not run.calibration and not reviewed:
        return run.inputs.fully_annotated_file
    path = run.layout.round_fully_annotated(r) if reviewed else run.layout.lpg_fully_annotated
    if not path.is_file():
        held = set(run.calibration)
        write_slice_boxes(path, {k: v for k, v in run.inputs.fully_annotated.items() if k not in held})
    return str(path)


def _pooled_examples(run: HarvestRun, up_to_round: int):
    """Positives and hard negatives of rounds 1..up_to_round, for fine-tuning (:func:`steps.pool_examples`);
    the reviewers' verified lesions and rejected proposals first, and none of their verdicts contradicted."""
    ledger, reviewed = run.ledger, run.reviewed
    rounds = [(reviewed.positives, reviewed.negatives)]
    for q in range(up_to_round, 0, -1):
        positives = [(row.volume, row.tracklet) for row in ledger.proposals(q, statuses=steps.POSITIVE)
                     if (q, row.volume, row.idx) not in reviewed.rejected]
        rounds.append((positives, _hard_negatives(run, q)))
    return steps.pool_examples(rounds, run.unseen, run.known_lesions())


def _hard_negatives(run: HarvestRun, r: int):
    """Round ``r``'s hard negatives, less the proposals a reviewer accepted; none on a known lesion
    or on one of the round's proposals that verification found on a complete label of V_M."""
    accepted = run.reviewed.accepted
    rows = {s: [row for row in run.ledger.proposals(r, statuses=(s,)) if (r, row.volume, row.idx) not in accepted]
            for s in ("hard_negative", FA_NEGATIVE, FA_LESION)}
    lesions = run.known_lesions([(row.volume, row.tracklet) for row in rows[FA_LESION]])
    return hard_negatives_of(rows["hard_negative"], rows[FA_NEGATIVE], run.preset.harvest, lesions)


def _lpg(run: HarvestRun, r: int) -> None:
    layout = run.layout
    extra = {}
    if r > 1:
        if run.dist.is_main:
            positives, negatives = _pooled_examples(run, r - 1)
            write_tracklets(layout.finetune_positives(r), group_by_volume(positives))
            write_tracklets(layout.finetune_negatives(r), group_by_volume(negatives))
        run.dist.barrier()
        extra = {"extra_positives": str(layout.finetune_positives(r)),
                 "hard_negatives": str(layout.finetune_negatives(r)), "init": str(layout.lpg(r - 1).best)}
    train_lpg(run.data, layout.lpg(r).root, steps.lpg_preset(run.preset, r), run.device,
              fully_annotated=lpg_fully_annotated_file(run, r), progress=run.progress,
              exclude_volumes=run.held_out_marks, dist=run.dist, **extra)
    if run.dist.is_main:
        with run.ledger.transaction() as db:
            run.ledger.finish_step(db, r, "lpg", {"checkpoint": str(layout.lpg(r).best)})


def _scan(run: HarvestRun, r: int) -> None:
    keys = list(run.inputs.fully_annotated) + run.inputs.harvest
    results = propose(run.data, run.layout.lpg(r).best, run.layout.proposals(r), stack=run.preset.stack,
                      scan=run.preset.scan, device=run.device, progress=run.progress, keys=keys, dist=run.dist)
    if run.dist.is_main:
        with run.ledger.transaction() as db:
            n = run.ledger.add_proposals(db, r, results)
            run.ledger.finish_step(db, r, "scan", {"proposals": n})


def _operating_point(run: HarvestRun, r: int) -> None:
    """Measure round ``r``'s LPG's operating point again, on :meth:`Partition.operating_point_truth`'s volumes
    (V_H^test's from the round's scan, the validation volumes scanned alike), and store it in its
    ``best.pt`` for ``detect --fp-per-volume``: the training measured it on the validation volumes
    alone (12 on the bench: the 1-FP point then rests on 12 false positives). Where there are no
    complete labels beyond V_M's, the training's point stays."""
    truth, description = run.inputs.operating_point_truth()
    checkpoint = run.layout.lpg(r).best
    detections: dict[str, list[Tracklet]] = {}
    validation = [k for k in run.inputs.validation if k in truth]
    if validation:  # every rank scans its share
        detections = propose(run.data, checkpoint, run.layout.validation_proposals(r), stack=run.preset.stack,
                             scan=run.preset.scan, device=run.device, progress=run.progress, keys=validation,
                             dist=run.dist)
    if not run.dist.is_main:
        return
    info: dict = {"measured": False}
    if truth:
        for row in run.ledger.proposals(r, volumes=list(run.inputs.holdout)):
            detections.setdefault(row.volume, []).append(row.tracklet)
        stored = checkpoint_operating_point(checkpoint)
        # what the training measured (kept through a rerun of this step after a kill)
        replaces = (stored.get("replaces") if stored and stored.get("harvest_round") == r
                    else None if stored is None else {k: stored.get(k) for k in ("truth", "volumes", "lesions")})
        point = {**operating_point_of(detections, truth, run.preset.stack.score_threshold), "truth": description,
                 "data": str(Path(run.data).resolve()), "harvest_round": r, "replaces": replaces}
        store_operating_point(checkpoint, point)
        log.info("operating point of %s: %s", checkpoint, describe_operating_point(point))
        info = {"measured": True, "volumes": point["volumes"], "lesions": point["lesions"],
                "score_at_1_fp": point["rates"]["1"]["score"]}
    with run.ledger.transaction() as db:
        run.ledger.finish_step(db, r, "operating_point", info)


def _verify(run: HarvestRun, r: int) -> None:
    rows = group_by_volume((row.volume, row) for row in run.ledger.proposals(r))
    statuses = verify_proposals({key: [row.tracklet for row in members] for key, members in rows.items()},
                                run.inputs.fully_annotated, run.inputs.marks, run.preset.harvest.verify_iou)
    updates = [(key, row.idx, status) for key, members in rows.items()
               for row, status in zip(members, statuses[key]) if status is not None]
    with run.ledger.transaction() as db:
        run.ledger.set_statuses(db, r, updates)
        counts = {s: sum(1 for u in updates if u[2] == s) for s in (FA_LESION, FA_NEGATIVE, RECIST)}
        run.ledger.finish_step(db, r, "verify", counts)


def round_lpc_examples(run: HarvestRun, r: int) -> LPCExamples:
    """What round ``r``'s LPC trains on: its verified proposals (P_M^R, P_M^-, P_H^R; none on the
    held-out marks), and V_H proposals as negatives where ``lpc.vh_negatives_per_volume`` asks."""
    held = set(run.held_out_marks)
    vm = run.ledger.proposals(r, statuses=VM_STATUSES)
    marked = [row for row in run.ledger.proposals(r, statuses=(RECIST,)) if row.volume not in held]
    marks = {k: v for k, v in run.inputs.marks.items() if k not in held}
    cfg = run.preset.lpc
    closed = set(run.inputs.fully_annotated) | set(run.inputs.holdout)  # no V_M, no V_H^test
    unlabelled, vh_negatives = [], []
    if cfg.pretrain != "none":
        unlabelled = steps.pretraining_items([(row.volume, row.tracklet) for row in run.ledger.proposals(r)],
                                             closed, cfg)
    if cfg.vh_negatives_per_volume:  # nor the volumes the estimate holds out; off every known lesion
        candidates = [(row.volume, row.tracklet) for row in run.ledger.proposals(r, statuses=("candidate",))]
        known = run.known_lesions(run.harvested_before(r))
        vh_negatives = steps.vh_negative_items(candidates, closed | run.unseen, known, cfg, cfg.seed + 100 * r)
    return steps.lpc_examples([(row.volume, row.tracklet, row.status) for row in vm],
                              [(row.volume, row.tracklet) for row in marked], run.inputs.fully_annotated,
                              marks, cfg.min_positives, unlabelled, vh_negatives)


def _lpc(run: HarvestRun, r: int) -> None:
    examples = round_lpc_examples(run, r)
    folds = run.folds()
    shortfall = steps.lpc_shortfall(examples, folds)
    if shortfall is not None:
        # a small V_M (or a weak early LPG) can leave a fold without negatives; the round goes on with the
        # LPG's ranking rather than stopping the harvest, and the ledger (hence the report) says so
        log.warning("round %d: %s; this round ranks its proposals by the LPG alone (s = s_g, as if s_c = 1)",
                    r, shortfall)
        with run.ledger.transaction() as db:
            run.ledger.finish_step(db, r, "lpc", {**examples.counts(), "folds": 0, "skipped": shortfall})
        return
    train_lpc_folds(examples, folds, run.volume, run.preset.lpc, run.preset.preprocess,
                    [run.layout.lpc_fold(r, f) for f in range(len(folds))], run.device,
                    seed=run.preset.lpc.seed + 100 * r, skip_existing=True, progress=run.progress,
                    desc=f"round {r} LPC")
    with run.ledger.transaction() as db:
        run.ledger.finish_step(db, r, "lpc", {**examples.counts(), "folds": len(folds)})


def lpc_skipped(run: HarvestRun, r: int) -> str | None:
    """Why round ``r`` has no LPC (:func:`steps.lpc_shortfall`), or None when it has one."""
    return (run.ledger.step_info(r, "lpc") or {}).get("skipped")


def _classify(run: HarvestRun, r: int) -> None:
    vm = run.ledger.proposals(r, statuses=VM_STATUSES)
    # the V_H candidates, and the proposals on held-out marks (which no fold trained on), for the estimate
    candidates = run.ledger.proposals(r, statuses=("candidate",))
    candidates += run.ledger.proposals(r, volumes=run.held_out_marks, statuses=(RECIST,)) if run.held_out_marks else []
    h = run.preset.harvest
    without_lpc = lpc_skipped(run, r) is not None
    if without_lpc:
        probability, exponents = steps.lpg_alone(vm + candidates), (1.0,)
    else:
        folds = run.folds()
        models = [load_lpc(run.layout.lpc_fold(r, f), run.device)[0] for f in range(len(folds))]
        probability = steps.lpc_probabilities(models, folds, vm, candidates, run.volume, run.preset.lpc, run.device,
                                              run.progress)
        exponents = h.fusion_exponents
    threshold_rows = run.threshold_rows(vm)
    updates, exponent, table = steps.fuse(threshold_rows, run.marks_of(threshold_rows), vm + candidates, probability,
                                          exponents, h.precision, h.fusion_choice, h.verify_iou)
    with run.ledger.transaction() as db:
        run.ledger.set_scores(db, r, updates)
        run.ledger.finish_step(db, r, "classify", {"classified": 0 if without_lpc else len(probability),
                                                   "fusion_exponent": exponent, "fusion_choices": table})


def _mine(run: HarvestRun, r: int) -> None:
    ledger = run.ledger
    vm = run.threshold_rows(ledger.proposals(r, statuses=VM_STATUSES))
    vm_marks = run.marks_of(vm)
    marked = [(row.volume, row.tracklet) for row in ledger.proposals(r, statuses=(RECIST,))]
    result = mine_round(vm, vm_marks, ledger.proposals(r, statuses=("candidate",)), marked, run.harvested_before(r),
                        run.preset.harvest, _marks_evidence(run, r), run.reviewed.negatives, run.known_lesions(),
                        vh_volumes=len(ledger.volumes("harvest")))
    with ledger.transaction() as db:
        ledger.set_statuses(db, r, result.updates)
        ledger.finish_step(db, r, "mine", {**result.info, "n_fa_negative": ledger.count(r, FA_NEGATIVE)})
    write_round_outputs(run.layout, r, ledger.proposals(r, statuses=("harvested",)), _hard_negatives(run, r))


def _marks_evidence(run: HarvestRun, r: int) -> MarksEvidence | None:
    """The held-out marks and the proposals of their volumes, for estimating the precision (or None)."""
    if not run.held_out_marks:
        return None
    dataset, v_m = run.inputs.dataset, list(run.inputs.fully_annotated)
    pixel_mm = {k: dataset.sub_volumes[k].spacing_zyx_mm[2] for k in v_m + run.held_out_marks}
    rates = mark_rates(run.inputs.fully_annotated, dataset.marks(v_m), pixel_mm, run.preset.harvest.verify_iou)
    rows = run.ledger.proposals(r, volumes=run.held_out_marks, statuses=(RECIST, "candidate"))
    return marks_evidence(rows, run.inputs.marks, pixel_mm, rates, run.preset.harvest.verify_iou)


def _lpc_variants(run: HarvestRun, r: int) -> None:
    """Round 1 only: train the axial 2D and the 3D LPC on the same examples (the paper's Fig. 5b) and
    score the holdout candidates with them (not in a round without an LPC: its examples cannot train one)."""
    skipped = lpc_skipped(run, r)
    if skipped:
        with run.ledger.transaction() as db:
            run.ledger.finish_step(db, r, "lpc_variants", {"skipped": skipped})
        return
    targets = steps.classifiable(run.ledger.proposals(r, volumes=list(run.inputs.holdout), statuses=(
        "candidate", "harvested", "hard_negative", "rejected")), run.preset.lpc)
    scores = steps.lpc_variant_scores(round_lpc_examples(run, r), targets, run.volume, run.preset.lpc,
                                      run.preset.harvest.variant_epochs, run.device, run.progress)
    path = run.layout.lpc_variants(r)
    atomic_write_text(path, json.dumps(scores))
    with run.ledger.transaction() as db:
        run.ledger.finish_step(db, r, "lpc_variants", {"file": str(path)})


# the steps of a round, in order; each records its name in the ledger when it finishes
ROUND_STEPS: dict[str, Callable[[HarvestRun, int], None]] = {
    "lpg": _lpg, "scan": _scan, "operating_point": _operating_point, "verify": _verify, "lpc": _lpc,
    "classify": _classify, "mine": _mine,
}
SHARED_STEPS = ("lpg", "scan", "operating_point")  # run by every rank under torchrun; the others by the main rank alone


def write_outputs(run: HarvestRun) -> None:
    """The run's deliverables from every finished round (nothing before round 1 is mined)."""
    ledger = run.ledger
    rounds = ledger.finished_rounds("mine")
    if not rounds:
        return
    rejected = run.reviewed.rejected  # harvested lesions a reviewer rejected are no deliverable
    lesions = harvested_lesions({r: [row for row in ledger.proposals(r, statuses=("harvested",))
                                     if (r, row.volume, row.idx) not in rejected] for r in rounds})
    _, negatives = _pooled_examples(run, max(rounds))  # what the next round's HNSL would use
    known = group_by_volume((row.volume, row.tracklet)
                            for row in ledger.proposals(max(rounds), statuses=(RECIST, FA_LESION)))
    # the lesions reviewers verified in V_H join the completed annotations (V_M's are in its labels)
    verified = [HarvestedLesion(key, t, 0, 1.0, 1.0, 1.0) for key, t in run.reviewed.positives
                if key not in run.inputs.fully_annotated]
    completed = completed_annotations(run.inputs.fully_annotated, run.inputs.harvest, run.inputs.marks, known,
                                      lesions + verified)
    write_harvest_outputs(run.layout, lesions, negatives, completed)


def harvest(data: str | Path, run_dir: str | Path, preset: Preset, fully_annotated: str | None = None,
            holdout: str | None = None, device: str = "auto", progress: bool = True,
            dist: Distributed = ALONE, cache_dir: str | Path | None = None) -> RunLayout:
    """Harvest ``data`` into ``run_dir`` for ``preset.harvest.rounds`` rounds (resumable); returns
    the run folder's layout. The log records of the run are appended to ``run_dir/harvest.log``.
    ``dist``: this rank under torchrun (see the module); ``cache_dir``: where prepared volumes are
    kept (:func:`lesion_harvester.paths.cache_dir_for`)."""
    run = open_run(data, run_dir, preset, fully_annotated, holdout, device, progress, dist, cache_dir,
                   lock=dist.is_main)  # rank 0 holds the lock for every rank of a torchrun launch
    try:
        with log_to_file(run.layout.log) if dist.is_main else contextlib.nullcontext():
            log.info("harvesting %s into %s (preset %s, %d rounds, device %s)", data, run.layout.root, preset.name,
                     preset.harvest.rounds, run.device)
            run_harvest(run, preset.harvest.rounds)
    finally:
        run.close()
    return run.layout

