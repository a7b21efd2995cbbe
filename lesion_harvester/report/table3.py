"""Table III as markdown: detectors trained on the label sets of a harvest, beside the paper's.

``results`` is what :func:`lesion_harvester.peers.table3.run_table3` returns (and writes to
``RUN/table3.json``): one entry per row with the mean and the range over training seeds.
"""

from __future__ import annotations

from lesion_harvester.paths import TABLE3_FIGURE

FP_RATES = ("0.125", "0.25", "0.5", "1", "2", "4", "8")

# The paper's Table III (V_D^test, P3D): sensitivity (%) at FP_RATES per volume, AP (%); the paper's
# two-stage peer is Faster R-CNN (the project's is MONAI's one-stage RetinaNet, also anchor-based)
PAPER_TABLE3 = {
    ("MSCN", "R"): ((11.92, 18.42, 27.54, 38.91, 50.15, 60.76, 69.82), 43.0),
    ("MSCN", "R+P"): ((13.40, 19.16, 27.34, 37.54, 49.33, 60.52, 70.18), 43.6),
    ("MSCN", "R+P+N"): ((19.86, 27.11, 36.21, 46.82, 56.89, 66.82, 74.73), 51.9),
    ("CenterNet", "R"): ((12.91, 19.89, 26.19, 35.77, 45.32, 56.94, 67.83), 41.0),
    ("CenterNet", "R+P"): ((14.38, 19.75, 28.04, 36.89, 46.82, 58.94, 68.70), 42.8),
    ("CenterNet", "R+P+N"): ((19.26, 25.87, 34.54, 43.17, 53.34, 63.08, 71.68), 48.3),
    ("Faster R-CNN", "R"): ((7.20, 13.21, 20.97, 31.27, 43.87, 54.92, 64.20), 34.2),
    ("Faster R-CNN", "R+P"): ((10.35, 15.98, 25.02, 35.63, 47.15, 57.74, 66.77), 38.5),
}


def _cell(stat: dict) -> str:
    if stat["min"] == stat["max"]:
        return f"{stat['mean']:.3f}"
    return f"{stat['mean']:.3f} ({stat['min']:.3f}-{stat['max']:.3f})"


def _gain(ap: float, r_ap: float | None, labels: str, fmt: str = "{:+.3f}") -> str:
    """AP minus the same detector's AP on R (the claim of Table III); '-' for R itself or no R row."""
    return "-" if labels == "R" or r_ap is None else fmt.format(ap - r_ap)


def ceiling_share(ap: float, r_ap: float | None, oracle_ap: float | None, labels: str) -> str:
    """A row's gain over R as a share of the oracle's (R+O - R): what of the labels' possible gain it
    recovers; '-' for R and R+O themselves, where either is missing, or where the oracle gains nothing."""
    if labels in ("R", "R+O") or r_ap is None or oracle_ap is None or oracle_ap - r_ap <= 0:
        return "-"
    return f"{(ap - r_ap) / (oracle_ap - r_ap):+.2f}"


def render_table3(results: dict) -> list[str]:
    """Markdown lines: this run's Table III (mean and range over seeds), then the paper's; with oracle
    rows (R+O), each detector's ceiling R+O - R and every row's gain as a share of it."""
    paper_header = "| detector | labels | seeds | " + " | ".join(f"{r} FP" for r in FP_RATES) + " | AP | AP - R |"
    paper_rule = "|---" * (len(FP_RATES) + 5) + "|"
    header, rule = paper_header, paper_rule
    r_ap = {row["detector"]: row["ap"]["mean"] for row in results["rows"] if row["labels"] == "R"}
    oracle_ap = {row["detector"]: row["ap"]["mean"] for row in results["rows"] if row["labels"] == "R+O"}
    lines = ["", "## Table III: detectors trained on this harvest's label sets", "",
             f"On `{results['split']}` ({results['volumes']} volumes, {results.get('lesions', '?')} lesions), P3D: "
             "sensitivity at FP per volume and AP, the mean over training seeds (range in brackets); AP - R, the "
             "gain over the same detector trained on R. R = the "
             "marks and V_M's labels, P = the harvested lesions (harvested.pkl), N = the hard negatives "
             "(hard_negatives.pkl, through the HNSL).", ""]
    if oracle_ap:
        ceilings = ", ".join(f"{d} {oracle_ap[d] - r_ap[d]:+.3f}" for d in oracle_ap if d in r_ap)
        lines += [f"Oracle: R+O = R and every lesion of the training volumes (the complete labels); its gain is "
                  f"the ceiling of what completing the labels can add here (R+O - R: {ceilings or 'no R row'}). "
                  "Share = a row's AP - R over R+O - R. Rpaper = R without the preset's hard-background mining; "
                  "Nclean = N without the hard negatives on a lesion.", ""]
        header, rule = header + " share of R+O - R |", rule + "---|"
    lines += [header, rule]
    for row in results["rows"]:
        cells = [_cell(row["froc"][r]) for r in FP_RATES] + [_cell(row["ap"])]
        labels = row["labels"] + (" (= R: nothing harvested)" if row.get("same_labels_as") else "")
        cells.append(_gain(row["ap"]["mean"], r_ap.get(row["detector"]), row["labels"]))
        if oracle_ap:
            cells.append(ceiling_share(row["ap"]["mean"], r_ap.get(row["detector"]), oracle_ap.get(row["detector"]),
                                       row["labels"]))
        lines.append(f"| {row['detector']} | {labels} | {len(row['seeds'])} | " + " | ".join(cells) + " |")
    if results["rows"]:  # peers.table3 draws the figure whenever a row is scored
        lines += ["", f"![Table III as FROC points]({TABLE3_FIGURE})"]
    lines += ["", "The paper's Table III (V_D^test of DeepLesion, %):", "", paper_header, paper_rule]
    for (detector, labels), (froc, ap) in PAPER_TABLE3.items():
        gain = _gain(ap, PAPER_TABLE3[(detector, "R")][1], labels, "{:+.1f}")
        cells = [f"{v:.1f}" for v in froc] + [f"{ap:.1f}", gain]
        lines.append(f"| {detector} | {labels} | - | " + " | ".join(cells) + " |")
    return lines
