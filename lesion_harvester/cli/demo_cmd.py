"""``lesion-harvester demo``: the quick CPU path of the README's ``make demo``.

Generates the demo synthetic dataset, measures what its original RECIST marks hold of the complete
ground truth, then harvests it (3 rounds of LPG, LPC and mining) and prints Table I. Every step is
resumable: running the demo again continues where a killed one stopped.
"""

from __future__ import annotations

import time
from pathlib import Path

from lesion_harvester.cli.common import add_device_option, add_preset_options, add_subcommand, preset_from_args


def add_parser(sub) -> None:
    p = add_subcommand(
        sub, "demo", "synthetic demo dataset, then a resumable 3-round harvest and its report",
        "What 'make demo' runs: generates OUT/data (the demo preset's synthetic CT with complete labels),\n"
        "scores the original marks, harvests into OUT/harvest and prints Table I. Run it again after a kill\n"
        "and it continues where it stopped; OUT/demo.log keeps the log.",
        ["lesion-harvester demo", "lesion-harvester demo --out demo_seed1 --seed 1 --quiet"])
    p.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic dataset (default 0)")
    add_preset_options(p)
    p.add_argument("--rounds", type=int, default=None, help="harvest rounds (default: the preset's, 3)")
    add_device_option(p)
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
    from lesion_harvester.cli.harvest_cmd import with_rounds
    from lesion_harvester.cli.report_cmd import print_table
    from lesion_harvester.harvest.rounds import harvest
    from lesion_harvester.io.logs import log_to_file
    from lesion_harvester.paths import RunLayout
    from lesion_harvester.report.harvest_report import build_report
    from lesion_harvester.synth.dataset import write_synthetic_dataset

    started = time.time()
    preset = with_rounds(preset_from_args(args, builds_lpg=True), args.rounds)
    out = Path(args.out)
    data = out / "data"
    with log_to_file(out / "demo.log", args.command_line):
        if not (data / "DL_info.csv").is_file():
            print(f"== generating the {args.preset} synthetic dataset in {data} ==")
            write_synthetic_dataset(data, preset.synth, seed=args.seed, progress=not args.quiet)
        evaluate_marks(data, out)
        if args.marks_only:
            print(f"\ndataset: {data} (montage {data / 'montage.png'}); outputs in {out}")
            return 0
        layout = RunLayout(out / "harvest")
        print(f"\n== harvesting {data} ({preset.harvest.rounds} rounds) into {layout.root} ==")
        harvest(data, layout.root, preset, device=args.device, progress=not args.quiet)
        report = build_report(layout.root)
    print()
    print_table(report)
    print(f"\ndataset: {data} (montage {data / 'montage.png'})")
    print(f"harvested lesions: {layout.harvested}; report: {layout.report_md}")
    print(f"demo finished in {(time.time() - started) / 60:.1f} minutes")
    return 0
