"""Why a harvest round's fine-tuning helps or hurts: the round's LPG fine-tuned again on variants of its examples.

    python benchmarks/finetune_check.py DATA RUN [--round 2] [--variants as_run,clean,...]
        [--split harvest_test] [--out DIR] [--device cpu] [--json OUT]

DATA must hold the complete labels (``ground_truth/complete.pkl`` and ``boxes_3d.pkl``, the synthetic
layout). Round ``--round`` of the harvest in RUN fine-tuned round - 1's LPG on pooled positives and
hard negatives (RUN/round_N/lpg_positives.pkl, lpg_hard_negatives.pkl); this script fine-tunes the
same LPG again with the same settings (``harvest/steps.py`` ``lpg_preset``) on each variant, scans
the split (V_H^test by default) and scores it with the P3D evaluation:

- ``before``: round - 1's LPG itself, not fine-tuned (the baseline);
- ``as_run``: the round's own examples (its LPG is retrained, so that every variant trains alike);
- ``clean``: the positives that lie on no lesion and the hard negatives on a lesion or part of one
  (harvest/verify.py ``touches`` against the lesions' 3D boxes) taken out by the complete labels;
- ``no_negatives``: the round's positives, no hard negative;
- ``clean_no_negatives``: the clean positives, no hard negative;
- ``marks_only``: the fine-tuning schedule on R alone (no extra positive or negative): what more
  training does by itself.

If ``clean`` gains where ``as_run`` loses, the harvest's wrong labels are what the round costs; if
``marks_only`` loses too, the fine-tuning itself does. Each variant trains into OUT/VARIANT/
(default RUN/finetune_check/round_N/), resumable; the run folder's own files are only read.
"""

from __future__ import annotations

import sys
from pathlib import Path

from lesion_harvester.config import load_preset
from lesion_harvester.device import resolve_device
from lesion_harvester.errors import DataError
from lesion_harvester.evaluation.api import evaluate_files, load_truth
from lesion_harvester.evaluation.matching import covers_a_lesion
from lesion_harvester.harvest.steps import lpg_preset
from lesion_harvester.harvest.verify import touches
from lesion_harvester.io.annotations import read_boxes_3d, read_tracklets, write_tracklets
from lesion_harvester.io.splits import read_splits
from lesion_harvester.lpg.propose import propose
from lesion_harvester.lpg.train import train_lpg
from lesion_harvester.paths import RunLayout, TrainLayout

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py, also when loaded by path
import common

VARIANTS = ("before", "as_run", "clean", "no_negatives", "clean_no_negatives", "marks_only")
FP_AT = ("0.5", "1", "2", "4")


def clean_examples(positives: dict, negatives: dict, truth: dict, lesions_3d: dict) -> tuple[dict, dict]:
    """The examples without their mistakes: positives on no lesion (neither P3D IoU >= 0.5 nor a slice
    inside a lesion's 3D box), hard negatives on a lesion or part of one."""
    def on_lesion(key, t) -> bool:
        return covers_a_lesion(t, truth.get(key)) or touches(t, lesions_3d.get(key, []))

    return ({k: [t for t in ts if on_lesion(k, t)] for k, ts in positives.items()},
            {k: [t for t in ts if not on_lesion(k, t)] for k, ts in negatives.items()})


@common.guarded
def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__)
    parser.add_argument("data")
    parser.add_argument("run")
    parser.add_argument("--round", type=int, default=2)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--split", default="harvest_test")
    parser.add_argument("--out", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("-q", "--quiet", action="store_true")
    args = parser.parse_args(argv)
    data, layout, r = Path(args.data), RunLayout(Path(args.run)), args.round
    variants = [v.strip() for v in args.variants.split(",")]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or r < 2:
        raise DataError(None, f"--variants {unknown} unknown (known: {', '.join(VARIANTS)})" if unknown
                        else "--round must be 2 or later (round 1 is not a fine-tuning)")
    positives_path, negatives_path = layout.finetune_positives(r), layout.finetune_negatives(r)
    for path in (positives_path, negatives_path, layout.lpg(r - 1).best, layout.config):
        if not path.is_file():
            raise DataError(path, "missing: give a harvest run that has begun round --round")
    truth_path = data / "ground_truth" / "complete.pkl"
    volumes = (read_splits(data) or {}).get(args.split)
    if not truth_path.is_file() or volumes is None:
        raise DataError(data, f"needs ground_truth/complete.pkl and a '{args.split}' split (the synthetic layout)")
    out = Path(args.out) if args.out else layout.root / "finetune_check" / f"round_{r}"
    out.mkdir(parents=True, exist_ok=True)
    preset = lpg_preset(load_preset(layout.config), r)
    device, progress = resolve_device(args.device), not args.quiet
    truth = load_truth(truth_path, "p3d")
    clean_pos, clean_neg = clean_examples(read_tracklets(positives_path), read_tracklets(negatives_path), truth,
                                          read_boxes_3d(data / "ground_truth" / "boxes_3d.pkl"))
    write_tracklets(out / "clean_positives.pkl", clean_pos)
    write_tracklets(out / "clean_negatives.pkl", clean_neg)
    examples = {"as_run": (positives_path, negatives_path), "clean": (out / "clean_positives.pkl",
                                                                       out / "clean_negatives.pkl"),
                "no_negatives": (positives_path, None), "clean_no_negatives": (out / "clean_positives.pkl", None),
                "marks_only": (None, None)}
    results = {"round": r, "split": args.split, "variants": {}}
    for variant in variants:
        checkpoint = layout.lpg(r - 1).best
        if variant != "before":
            extra, negatives = examples[variant]
            train_lpg(data, out / variant, preset, device, extra_positives=None if extra is None else str(extra),
                      hard_negatives=None if negatives is None else str(negatives), init=str(checkpoint),
                      progress=progress)
            checkpoint = TrainLayout(out / variant).best
        detections = out / f"{variant}_{args.split}.pkl"
        if not detections.is_file():
            propose(data, checkpoint, detections, args.split, device=device, progress=progress)
        scored = evaluate_files(truth_path, detections, volumes=volumes)
        results["variants"][variant] = {"ap": round(scored.ap, 4),
                                        "froc": {fp: round(scored.froc[fp], 4) for fp in FP_AT}}
    counts = {name: sum(len(v) for v in read_tracklets(path).values())
              for name, path in (("positives", positives_path), ("negatives", negatives_path),
                                 ("clean_positives", out / "clean_positives.pkl"),
                                 ("clean_negatives", out / "clean_negatives.pkl"))}
    results["examples"] = counts
    lines = [f"round {r} fine-tuning on {args.split}: " + "; ".join(
        f"{v} AP {e['ap']:.3f}, {e['froc']['4']:.3f} at 4 FP/volume" for v, e in results["variants"].items()),
        f"examples: {counts['positives']} positives ({counts['clean_positives']} on a lesion), {counts['negatives']} "
        f"hard negatives ({counts['clean_negatives']} on none)"]
    common.report(results, args.json, *lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
