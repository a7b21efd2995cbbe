"""``lesion-harvester demo``: the quick CPU path of the README's ``make demo``.

Generates the demo synthetic dataset and evaluates its original RECIST marks against its complete
ground truth: how much of the truth an incompletely labeled dataset holds, which harvesting then
completes.
"""

from __future__ import annotations

from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="synthetic demo dataset + evaluation of its original marks")
    p.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--preset", default="demo")
    p.set_defaults(handler=run)


def run(args) -> int:
    from lesion_harvester.cli.evaluate_cmd import format_table
    from lesion_harvester.config import load_preset
    from lesion_harvester.evaluation.api import load_truth
    from lesion_harvester.evaluation.metrics import evaluate_detections
    from lesion_harvester.io.annotations import marks_to_tracklets, write_tracklets
    from lesion_harvester.io.deeplesion import DeepLesionDataset
    from lesion_harvester.io.splits import read_splits
    from lesion_harvester.report.plots import plot_pr
    from lesion_harvester.synth.dataset import write_synthetic_dataset

    out = Path(args.out)
    data = out / "data"
    if not (data / "DL_info.csv").is_file():
        write_synthetic_dataset(data, load_preset(args.preset).synth, seed=args.seed)
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
    print(f"\ndataset: {data} (montage {data / 'montage.png'}); outputs in {out}")
    return 0
