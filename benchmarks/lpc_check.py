"""How well a round's LPC ranks proposals, against the LPG alone: LPC settings tried in minutes, not harvests.

    python benchmarks/lpc_check.py DATA RUN [--round 1] [--preset P] [--set lpc.KEY=VALUE ...] [--out DIR]
        [--json OUT]

DATA must hold the complete labels (``ground_truth/complete.pkl``, the synthetic layout). Round
``--round`` of the harvest in RUN verified its proposals; this script trains that round's LPC folds
again (the run's preset, changed by ``--set``), on the round's own examples (as the harvest chose
them: V_M's verified proposals, V_H's marked ones and, where the preset asks, V_H's negatives), and
scores:

- ``v_m``: V_M's new proposals (those covering none of V_M's marks, as the threshold and the fusion
  exponent see them), scored out of fold: AP of s_g, s_c and s_g * s_c against V_M's complete labels
  (the harvest's own evidence);
- ``v_h_test``: the classifiable proposals of V_H^test that cover no mark, scored by the mean of the
  folds: AP of the same three against the complete labels the harvest never saw (the truth);
- ``hard``: of those V_H^test proposals with s_g >= 0.5, the share on a lesion (P3D) at s_c cuts: how
  clean hard negatives chosen by the LPC would be.

The paper's claim (Fig. 5b) is that s_g * s_c ranks better than s_g. Each call trains into
OUT (default RUN/lpc_check/round_N/<settings digest>/), reused when called again with the same
settings; the run folder's own files are only read.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from lesion_harvester.config import Preset, fingerprint, load_preset
from lesion_harvester.dataset.prepared_cache import PreparedCache
from lesion_harvester.dataset.roles import Partition, resolve_partition
from lesion_harvester.device import resolve_device
from lesion_harvester.errors import DataError
from lesion_harvester.evaluation.api import load_truth
from lesion_harvester.evaluation.matching import covers_a_lesion
from lesion_harvester.harvest.ledger import Ledger
from lesion_harvester.harvest.mine import average_precision
from lesion_harvester.harvest.steps import (
    classifiable,
    known_lesions,
    lpc_examples,
    lpc_folds,
    lpc_probabilities,
    pretraining_items,
    vh_negative_items,
    withheld_volumes,
)
from lesion_harvester.harvest.verify import FA_LESION, FA_NEGATIVE, RECIST, covers_marks
from lesion_harvester.lpc.api import LPCExamples, train_lpc_folds
from lesion_harvester.lpc.train import load_lpc
from lesion_harvester.paths import RunLayout, cache_dir_for

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py, also when loaded by path
import common

S_C_CUTS = (0.05, 0.1, 0.2, 0.3, 0.5)


def rankings(s_g: np.ndarray, s_c: np.ndarray, is_lesion: np.ndarray) -> dict:
    """AP of s_g, s_c and s_g * s_c for proposals with ``is_lesion`` labels, and their counts."""
    aps = {name: round(average_precision(s, is_lesion), 4) for name, s in (("ap_s_g", s_g), ("ap_s_c", s_c),
                                                                           ("ap_s_g_s_c", s_g * s_c))}
    return {"n": len(is_lesion), "lesions": int(np.sum(is_lesion)), **aps}


def round_examples(ledger: Ledger, part: Partition, preset: Preset, r: int) -> LPCExamples:
    """What round ``r``'s LPC trained on, as :func:`lesion_harvester.harvest.rounds.round_lpc_examples`
    chose it (with ``preset``'s LPC settings): V_M's verified proposals, V_H's marked ones (none of the
    marks the estimate holds out), and V_H's negatives outside V_M, V_H^test and the volumes no model
    learns from, off every lesion known then (reviewers' verdicts aside: this script reads none)."""
    holdout = set(ledger.volumes(holdout=True))
    # as the run's ledger records them; drawn again for a run folder older than the record
    calibration, held_out_marks = ledger.withheld() or withheld_volumes(part, holdout, preset)
    held = set(held_out_marks)
    closed = set(part.fully_annotated) | holdout
    unseen = held | set(part.validation) | set(calibration)  # as HarvestRun.unseen
    vm = ledger.proposals(r, statuses=(FA_LESION, FA_NEGATIVE))
    marked = [row for row in ledger.proposals(r, statuses=(RECIST,)) if row.volume not in held]
    unlabelled = pretraining_items([(row.volume, row.tracklet) for row in ledger.proposals(r)], closed, preset.lpc)
    # the V_H proposals that were candidates when the LPC trained (the mine step has relabelled them since)
    candidates = [(row.volume, row.tracklet) for row in ledger.proposals(r)
                  if row.status not in (FA_LESION, FA_NEGATIVE, RECIST)]
    earlier = [(row.volume, row.tracklet) for q in range(1, r) for row in ledger.proposals(q, statuses=("harvested",))]
    vh_negatives = vh_negative_items(candidates, closed | unseen, known_lesions(part, earlier), preset.lpc,
                                     preset.lpc.seed + 100 * r)
    return lpc_examples([(row.volume, row.tracklet, row.status) for row in vm],
                        [(row.volume, row.tracklet) for row in marked], part.fully_annotated,
                        {k: v for k, v in part.marks.items() if k not in held}, preset.lpc.min_positives,
                        unlabelled, vh_negatives)


@common.guarded
def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__)
    parser.add_argument("data")
    parser.add_argument("run")
    parser.add_argument("--round", type=int, default=1)
    parser.add_argument("--preset", default=None, help="preset name or YAML (default: RUN/config.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--out", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("-q", "--quiet", action="store_true")
    args = parser.parse_args(argv)
    data, layout, r = Path(args.data), RunLayout(Path(args.run)), args.round
    if not layout.ledger.is_file() or not layout.config.is_file():
        raise DataError(layout.root, "no harvest here (ledger.sqlite and config.yaml)")
    preset = load_preset(args.preset or layout.config, args.set)
    truth = load_truth(data / "ground_truth" / "complete.pkl", "p3d")
    ledger = Ledger(layout.ledger)
    try:
        if ledger.step_info(r, "verify") is None:
            raise DataError(layout.ledger, f"round {r} has not verified its proposals yet")
        part = resolve_partition(data, ledger.get_meta("fully_annotated_file") or None, purpose="checking the LPC")
        examples = round_examples(ledger, part, preset, r)
        vm = ledger.proposals(r, statuses=(FA_LESION, FA_NEGATIVE))
        test = [row for row in ledger.proposals(r, volumes=ledger.volumes(holdout=True)) if row.status != RECIST]
    finally:
        ledger.close()
    folds = lpc_folds(list(part.fully_annotated), preset.lpc.folds)
    out = Path(args.out) if args.out else layout.root / "lpc_check" / f"round_{r}" / fingerprint(preset.lpc)[:12]
    out.mkdir(parents=True, exist_ok=True)
    device, progress = resolve_device(args.device), not args.quiet
    cache = PreparedCache(cache_dir_for(data, None), preset.preprocess)

    def volume(key: str):
        return cache.get(part.source, key)

    paths = [out / f"fold{f}.pt" for f in range(len(folds))]
    train_lpc_folds(examples, folds, volume, preset.lpc, preset.preprocess, paths, device,
                    seed=preset.lpc.seed + 100 * r, skip_existing=True, progress=progress)
    models = [load_lpc(path, device)[0] for path in paths]
    vm_marks = part.dataset.marks(list(part.fully_annotated))
    new_vm = [row for row, covers in zip(vm, covers_marks([(row.volume, row.tracklet) for row in vm], vm_marks))
              if not covers]
    test = classifiable(test, preset.lpc)
    probability = lpc_probabilities(models, folds, classifiable(new_vm, preset.lpc), test, volume, preset.lpc,
                                    device, progress)

    def scores(rows):
        return (np.array([row.objectness for row in rows]),
                np.array([probability.get((row.volume, row.idx), 0.0) for row in rows]))

    vm_g, vm_c = scores(new_vm)
    test_g, test_c = scores(test)
    test_lesion = np.array([covers_a_lesion(row.tracklet, truth.get(row.volume)) for row in test], dtype=bool)
    high = test_g >= 0.5
    hard = [{"s_c_below": cut, "n": int((high & (test_c < cut)).sum()),
             "lesion_share": round(float(test_lesion[high & (test_c < cut)].mean()), 3)
             if (high & (test_c < cut)).any() else None} for cut in S_C_CUTS]
    results = {"round": r, "settings": args.set, "folder": str(out),
               "v_m": rankings(vm_g, vm_c, np.array([row.status == FA_LESION for row in new_vm], dtype=bool)),
               "v_h_test": rankings(test_g, test_c, test_lesion),
               "hard": {"n": int(high.sum()), "lesion_share": round(float(test_lesion[high].mean()), 3)
                        if high.any() else None, "by_s_c": hard}}
    v, t = results["v_m"], results["v_h_test"]
    lines = [f"round {r} LPC {' '.join(args.set) or '(as run)'}: V_M out of fold AP s_g {v['ap_s_g']:.3f}, "
             f"s_c {v['ap_s_c']:.3f}, s_g*s_c {v['ap_s_g_s_c']:.3f} ({v['lesions']} of {v['n']}); V_H^test AP s_g "
             f"{t['ap_s_g']:.3f}, s_c {t['ap_s_c']:.3f}, s_g*s_c {t['ap_s_g_s_c']:.3f} ({t['lesions']} of {t['n']})",
             f"V_H^test proposals with s_g >= 0.5: {results['hard']['n']}, lesions {results['hard']['lesion_share']}; "
             + ", ".join(f"s_c < {h['s_c_below']}: {h['lesion_share']} of {h['n']}" for h in hard)]
    common.report(results, args.json, *lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
