"""How many volumes a radiologist should annotate, and which: the harvest against the labor budget.

    python benchmarks/labor_budget.py DATA [DATA ...] --out DIR [--budgets 2.5,5,10,20]
        [--strategies random,uncertainty] [--preset demo] [--set SECTION.KEY=VALUE ...] [--seed 0]
        [--device cpu] [--json OUT]

Each DATA is a synthetic dataset (complete labels; one per data seed, e.g. ``lesion-harvester synth
DATA --preset demo --volumes 160 --seed S`` for a V_H large enough that 20% of it stays a small set).
For each: one harvest round from the dataset's own V_M (DIR/<data>/base), then, from that same start,
for each budget (a share of V_H's open volumes: not V_H^test, not validation) and strategy
(``lesion-harvester select``), a copy of it whose selected volumes a simulated annotator labels
completely through the reviewers' verdicts (harvest/reviews.py ``annotate_fully``), and its round
2, in which they join V_M. Budget 0 (no volume annotated, round 2 all the same) is the reference.

Per run: recall at 90% precision on V_H^test over the marks' (the Table I gain), the true
precision of round 2's harvested lesions over all of V_H, what the harvest estimated of it (V_M's
count and its 95% interval), and the radiologist's cost (volumes, their lesions, the new ones
among them). Writes DIR/labor_budget.json and DIR/labor_budget.png (gain and precision against
the budget, one line per strategy, seeds as bands). Resumable: finished runs are read back.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
from pathlib import Path

import numpy as np

from lesion_harvester.config import load_preset
from lesion_harvester.dataset.roles import resolve_partition
from lesion_harvester.device import resolve_device
from lesion_harvester.errors import DataError
from lesion_harvester.evaluation.api import load_truth
from lesion_harvester.evaluation.matching import covers_a_lesion
from lesion_harvester.harvest.ledger import Ledger
from lesion_harvester.harvest.reviews import annotate_fully
from lesion_harvester.harvest.rounds import harvest
from lesion_harvester.harvest.select import STRATEGIES, read_selection, select_for_run
from lesion_harvester.io.annotations import read_slice_boxes
from lesion_harvester.io.deeplesion import DeepLesionDataset
from lesion_harvester.paths import RunLayout
from lesion_harvester.report.harvest_report import build_report
from lesion_harvester.report.plots import plot_budget

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py, also when loaded by path
import common


def open_volumes(base: Path, data: Path) -> list[str]:
    """The volumes a budget is a share of: V_H less V_H^test and validation."""
    ledger = Ledger(RunLayout(base).ledger)
    try:
        closed = set(ledger.volumes(holdout=True)) | set(resolve_partition(data).validation)
        return [k for k in ledger.volumes("harvest") if k not in closed]
    finally:
        ledger.close()


def run_budget(data: Path, base: Path, run: Path, preset, budget_volumes: int, strategy: str, seed: int,
               device: str, progress: bool) -> None:
    """A copy of the base run, its volumes selected and annotated (once), and its round 2 (resumable)."""
    if not run.exists():
        shutil.copytree(base, run, ignore=shutil.ignore_patterns(".lock", "table3", "*.partial"))
    if budget_volumes and not read_selection(run):
        chosen = select_for_run(run, budget_volumes, strategy, seed)
        complete = read_slice_boxes(data / "ground_truth" / "complete.pkl")
        ledger = Ledger(RunLayout(run).ledger)
        try:
            annotate_fully(ledger, {c.volume: complete.get(c.volume, []) for c in chosen})
        finally:
            ledger.close()
    harvest(data, run, dataclasses.replace(preset, harvest=dataclasses.replace(preset.harvest, rounds=2)),
            device=device, progress=progress)


def measure(data: Path, run: Path, truth, complete: dict, marks: dict) -> dict:
    """Round 2 of ``run``: the gain, the true and estimated precision, and what the annotation cost."""
    report = build_report(run, progress=False)
    last = report["rounds"][-1]
    gain = last["lpg_lpc"]["recall_at_precision"]["0.9"] - report["original_marks"]["recall"]
    ledger = Ledger(RunLayout(run).ledger)
    try:
        r = ledger.finished_rounds("mine")[-1]
        harvested = ledger.proposals(r, statuses=("harvested",))
        estimate = (ledger.step_info(r, "mine").get("estimates") or {}).get("vm", {})
    finally:
        ledger.close()
    real = [covers_a_lesion(row.tracklet, truth.get(row.volume)) for row in harvested]
    chosen = list(read_selection(run))
    lesions = sum(len(complete.get(k, [])) for k in chosen)
    return {"round": r, "gain_r90p": round(gain, 4), "r90p": last["lpg_lpc"]["recall_at_precision"]["0.9"],
            "harvested": len(harvested), "true_precision": round(float(np.mean(real)), 4) if real else None,
            "estimated_precision": estimate.get("precision"), "estimated_interval": estimate.get("interval"),
            "annotated_volumes": len(chosen), "annotated_lesions": lesions,
            "annotated_new_lesions": lesions - sum(len(marks.get(k, [])) for k in chosen)}


@common.guarded
def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__)
    parser.add_argument("data", nargs="+")
    parser.add_argument("--out", required=True)
    parser.add_argument("--budgets", default="2.5,5,10,20", help="shares of V_H's open volumes, in percent")
    parser.add_argument("--strategies", default="random,uncertainty")
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--seed", type=int, default=0, help="the random strategy's seed")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("-q", "--quiet", action="store_true")
    args = parser.parse_args(argv)
    budgets = [float(b) for b in args.budgets.split(",")]
    strategies = [s.strip() for s in args.strategies.split(",")]
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown or any(b <= 0 or b >= 100 for b in budgets):
        raise DataError(None, f"--strategies {unknown} unknown (known: {', '.join(STRATEGIES)})" if unknown
                        else "--budgets are percentages between 0 and 100")
    preset = load_preset(args.preset, args.set)
    # every copy runs its round 2, even after a round 1 that found nothing new
    preset = dataclasses.replace(preset, harvest=dataclasses.replace(preset.harvest, min_new_lesions=0))
    device, progress, out = resolve_device(args.device), not args.quiet, Path(args.out)
    results = {"preset": args.preset, "settings": args.set, "budgets": budgets, "strategies": strategies, "runs": []}
    curves: dict[str, dict[float, list]] = {s: {} for s in strategies}
    for data in map(Path, args.data):
        if not (data / "ground_truth" / "complete.pkl").is_file():
            raise DataError(data, "needs ground_truth/complete.pkl (a synthetic dataset)")
        base = out / data.name / "base"
        harvest(data, base, dataclasses.replace(preset, harvest=dataclasses.replace(preset.harvest, rounds=1)),
                device=device, progress=progress)
        candidates = open_volumes(base, data)
        truth = load_truth(data / "ground_truth" / "complete.pkl", "p3d")
        complete = read_slice_boxes(data / "ground_truth" / "complete.pkl")
        marks = DeepLesionDataset(data).marks(candidates)
        runs = [("none", 0.0, 0)] + [(s, b, max(1, round(b / 100 * len(candidates)))) for b in budgets
                                     for s in strategies]
        for strategy, budget, k in runs:
            run = out / data.name / f"{strategy}_{budget:g}"
            run_budget(data, base, run, preset, k, strategy, args.seed, device, progress)
            entry = {"data": str(data), "strategy": strategy, "budget_percent": budget, "budget_volumes": k,
                     "open_volumes": len(candidates), **measure(data, run, truth, complete, marks)}
            results["runs"].append(entry)
            for s in strategies if strategy == "none" else [strategy]:  # budget 0 starts every line
                curves[s].setdefault(budget, []).append((entry["gain_r90p"], entry["true_precision"],
                                                         entry["harvested"]))
    plot_budget(curves, out / "labor_budget.png", title=f"labor budget ({args.preset}, {len(args.data)} data seeds)")
    results["figure"] = str(out / "labor_budget.png")
    lines = []
    for s in strategies:
        for b in sorted(curves[s]):
            gains = [g for g, _, _ in curves[s][b]]
            precisions = [p for _, p, _ in curves[s][b] if p is not None]
            harvested = sum(n for _, _, n in curves[s][b])
            lines.append(f"{s} at {b:g}% of V_H: R@90P gain {np.mean(gains):+.3f} (range {min(gains):+.3f} to "
                         f"{max(gains):+.3f}), {harvested} lesions harvested, "
                         + (f"{np.mean(precisions):.3f} precise" if precisions else "none") + f" ({len(gains)} seeds)")
    common.report(results, args.json or str(out / "labor_budget.json"), *lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
