"""``lesion-harvester demo``: the quick CPU path of the README's ``make demo``.

Generates the demo synthetic dataset, measures what its original RECIST marks hold of the complete
ground truth, then harvests it (3 rounds of LPG, LPC and mining) and prints Table I. Every step is
resumable: running the demo again continues where a killed one stopped.
"""

from __future__ import annotations

import time
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="synthetic demo dataset, then a resumable 3-round harvest and its report")
    p.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--preset", default="demo")
    p.add_argument("--rounds", type=int, default=None, help="harvest rounds (default: the preset's, 3)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--marks-only", action="store_true", help="only evaluate the original marks, no harvest")
    p.set_defaults(handler=run)


def evaluate_marks(data: Path, out: Path) -> None:
    """Score the original marks of the test splits against the complete ground truth (and plot them)."""
    from lesion_harvester.cli.evaluate_cmd import format_table
    from lesion_harvester.evaluation.api import load_truth
    from lesion_harvester.evaluation.metrics import evaluate_detections
    from lesion_harvester.io.annotations import write_tracklets
    from lesion_harvester.io.deeplesion import DeepLesionDataset
    from lesion_harvester.io.splits import read_splits
    from lesion_harvester.report.plots import plot_pr
    from lesion_harvester.structures import marks_to_tracklets

    dataset = DeepLesionDataset(data)
    truth = load_truth(data / "ground_truth" / "complete.pkl", "p3d")
    splits = read_splits(data) or {}
    for split in ("harvest_test", "detection_test"):
        keys = splits.get(split, [])
        marks = marks_to_tracklets(dataset.marks(keys))
        write_tracklets(out / f"marks_{split}.pkl", marks)
        result = evaluate_detections({k: truth[k] for k in keys}, marks)
        print(f"\n== original RECIST marks of {split} against the complete ground truth ==")
        print(format_table(result))
        plot_pr(
            {},
            out / f"marks_{split}_pr.png",
            title=f"original marks, {split}",
            points={"original marks": (result.recall[-1], result.precision[-1])},
        )


def run(args) -> int:
    import dataclasses

    from lesion_harvester.cli.report_cmd import print_table
    from lesion_harvester.config import load_preset
    from lesion_harvester.harvest.rounds import harvest
    from lesion_harvester.report.harvest_report import build_report
    from lesion_harvester.synth.dataset import write_synthetic_dataset

    started = time.time()
    preset = load_preset(args.preset)
    if args.rounds is not None:
        preset = dataclasses.replace(preset, harvest=dataclasses.replace(preset.harvest, rounds=args.rounds))
    out = Path(args.out)
    data = out / "data"
    if not (data / "DL_info.csv").is_file():
        print(f"== generating the {args.preset} synthetic dataset in {data} ==")
        write_synthetic_dataset(data, preset.synth, seed=args.seed)
    out.mkdir(parents=True, exist_ok=True)
    evaluate_marks(data, out)
    if args.marks_only:
        print(f"\ndataset: {data} (montage {data / 'montage.png'}); outputs in {out}")
        return 0

    run_dir = out / "harvest"
    print(f"\n== harvesting {data} ({preset.harvest.rounds} rounds) into {run_dir} ==")
    harvest(data, run_dir, preset, device=args.device)
    print()
    print_table(build_report(run_dir))
    print(f"\ndataset: {data} (montage {data / 'montage.png'})")
    print(f"harvested lesions: {run_dir / 'harvested.pkl'}; report: {run_dir / 'report.md'}")
    print(f"demo finished in {(time.time() - started) / 60:.1f} minutes")
    return 0
