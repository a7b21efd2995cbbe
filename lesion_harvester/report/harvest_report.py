"""The harvest report: ``RUN/report.json``, ``RUN/report.md`` and figures, rebuilt from the ledger.

Table I (recall at 80/85/90/95% precision on the holdout V_H^test): the original marks R (a single
operating point), R with the round's LPG proposals ranked by s_g ("LPG"), and R with them ranked
by s_g * s_c ("LPG+LPC"); the marks rank first, and proposals that cover a mark (P_H^R) are left
out, as the paper harvests P_H \\ P_H^R. Also: the LPG's own FROC on the holdout per round
(Table II style), lesions harvested per round, the precision and recall of the harvested labels
themselves (marks plus harvested.pkl), the PR curves of Fig. 5a and 5b and a Fig. 6-style montage.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from lesion_harvester.errors import DataError
from lesion_harvester.evaluation.matching import VolumeTruth
from lesion_harvester.evaluation.metrics import EvaluationResult, evaluate_detections
from lesion_harvester.geometry.display import DISPLAY_WINDOWS_HU, window_image
from lesion_harvester.harvest.ledger import Ledger
from lesion_harvester.harvest.precision import RULES, volumes_for_lower_bound
from lesion_harvester.harvest.verify import match_known
from lesion_harvester.io.annotations import read_slice_boxes, read_tracklets
from lesion_harvester.io.deeplesion import DeepLesionDataset
from lesion_harvester.io.figures import save_figure
from lesion_harvester.lpc.variants import VARIANTS
from lesion_harvester.paths import RunLayout
from lesion_harvester.report.plots import plot_pr
from lesion_harvester.report.table3 import render_table3
from lesion_harvester.storage.atomic import atomic_write_text
from lesion_harvester.structures import SliceBox, Tracklet, group_by_volume, marks_to_tracklets

MARK_SCORE = 2.0  # above any fused score, so that the marks rank first


# proposals on marked lesions: P_H^R and pieces of it (verification, not the LPG or LPC, set them apart)
KNOWN = ("recist", "marked_piece")


CERTIFY = 0.90  # the lower bound on a threshold's precision the report asks what it would take to reach


def with_marks(marks: dict[str, list[Tracklet]], extra: dict[str, list[Tracklet]]) -> dict[str, list[Tracklet]]:
    """The marks (ranked first: objectness ``MARK_SCORE``), then the ``extra`` detections, per volume."""
    out = {k: [t.with_objectness(MARK_SCORE) for t in v] for k, v in marks.items()}
    for k, v in extra.items():
        out.setdefault(k, []).extend(v)
    return out


def _rap(result: EvaluationResult) -> dict[str, float]:
    return {k: round(v, 4) for k, v in result.recall_at_precision.items()}


def build_report(run_dir: str | Path, progress: bool = True) -> dict:
    layout = RunLayout(Path(run_dir))
    if not layout.ledger.is_file():
        raise DataError(layout.root, f"no harvest ledger ({layout.ledger.name}) in this folder")
    ledger = Ledger(layout.ledger)
    rounds = ledger.finished_rounds("mine")
    if not rounds:
        raise DataError(layout.root, "no finished harvest round to report on yet")
    data = Path(ledger.get_meta("data"))
    holdout_keys = json.loads(ledger.get_meta("holdout_volumes"))
    holdout_truth = read_slice_boxes(ledger.get_meta("holdout_file"))
    truth = {k: VolumeTruth.from_slice_boxes(holdout_truth[k]) for k in holdout_keys}
    dataset = DeepLesionDataset(data)
    marks = marks_to_tracklets(dataset.marks(holdout_keys))
    original = evaluate_detections(truth, marks)
    report: dict = {
        "holdout_volumes": len(holdout_keys),
        "holdout_lesions": original.n_gt,
        "original_marks": {"recall": round(float(original.recall[-1]) if len(original.recall) else 0.0, 4),
                           "precision": round(float(original.precision[-1]) if len(original.precision) else 1.0, 4),
                           "n_marks": original.n_detections},
        "rounds": [],
    }
    curves: dict[str, EvaluationResult] = {}
    froc_rows = []
    for r in rounds:
        info = ledger.step_info(r, "mine")
        rows = [row for row in ledger.proposals(r, volumes=holdout_keys)]
        new = [row for row in rows if row.status not in KNOWN]
        by_objectness = group_by_volume((row.volume, row.tracklet) for row in new)
        by_score = group_by_volume((row.volume, row.tracklet.with_objectness(row.score or 0.0)) for row in new)
        lpg = evaluate_detections(truth, with_marks(marks, by_objectness))
        lpg_lpc = evaluate_detections(truth, with_marks(marks, by_score))
        froc = evaluate_detections(truth, group_by_volume((row.volume, row.tracklet) for row in rows))
        froc_rows.append((r, froc))
        if r == rounds[0]:
            curves[f"R + P_H,{r} (LPG, s_g)"] = lpg
        exponent = (ledger.step_info(r, "classify") or {}).get("fusion_exponent", 1.0)
        # a round whose examples could not train the LPC ranked by the LPG alone (harvest/rounds.py)
        no_lpc = (ledger.step_info(r, "lpc") or {}).get("skipped")
        scored_by = "LPG alone, no LPC" if no_lpc else f"LPG+LPC, s_g*s_c^{exponent:g}"
        curves[f"R + P_H,{r}^+ ({scored_by})"] = lpg_lpc
        # the true precision of this round's harvested lesions, where the holdout's complete labels tell
        harvested = [row for row in rows if row.status == "harvested"]
        real = [bool(match_known([row.tracklet], holdout_truth[row.volume])[0]) for row in harvested]
        report["rounds"].append({
            "round": r,
            "lpg": {"recall_at_precision": _rap(lpg), "ap": round(lpg.ap, 4)},
            "lpg_lpc": {"recall_at_precision": _rap(lpg_lpc), "ap": round(lpg_lpc.ap, 4)},
            "lpg_froc": {k: round(v, 4) for k, v in froc.froc.items()},
            "n_harvested": info["n_harvested"],
            "n_new": info["n_new"],
            "n_hard_negatives": info["n_hard_negatives"],
            "threshold": info["threshold"],
            # what the threshold rests on: V_M's new lesions and false positives above it (older runs: None)
            "vm_support": _support(info),
            "fusion_exponent": exponent,  # w of s = s_g * s_c**w (1: the paper's product, and older runs)
            # why the round had no LPC (its proposals ranked by s = s_g), or None
            "no_lpc_because": no_lpc,
            # when a round harvests nothing: why, and what the user can change (older runs: None)
            "nothing_harvested_because": info.get("nothing_harvested_because"),
            # the precision of the harvested lesions: estimated by each rule the run could use (older
            # runs: {}), and true on V_H^test
            "threshold_rule": info.get("threshold_rule", "vm"),
            "estimated_precision": info.get("estimates", {}),
            "true_precision_holdout": {"n_harvested": len(harvested),
                                       "precision": round(float(np.mean(real)), 4) if real else None},
        })
    harvested_path = layout.harvested
    if harvested_path.is_file():
        harvested = {k: v for k, v in read_tracklets(harvested_path).items() if k in truth}
        labels = evaluate_detections(truth, with_marks(marks, harvested))
        alone = evaluate_detections(truth, harvested)
        n_harvested = sum(len(v) for v in harvested.values())
        report["harvested_labels"] = {
            "precision": round(float(labels.precision[-1]) if len(labels.precision) else 1.0, 4),
            "recall": round(float(labels.recall[-1]) if len(labels.recall) else 0.0, 4),
            # the harvested lesions alone, without the marks: what the 95% on V_M was meant to hold
            "harvested_precision": round(float(alone.precision[-1]), 4) if len(alone.precision) else None,
            "n_harvested_in_holdout": n_harvested,
            "n_harvested_total": sum(len(v) for v in read_tracklets(harvested_path).values()),
        }
    report["elapsed_s"] = float(ledger.get_meta("elapsed_s") or 0.0)
    stopped = ledger.get_meta("stopped_after_round")
    report["stopped_early_after_round"] = int(stopped) if stopped else None
    # figures
    plot_pr(curves, layout.fig5a, title="harvest PR on V_H^test (Fig. 5a)",
            points={"original marks R": (report["original_marks"]["recall"], report["original_marks"]["precision"])})
    variants = _variant_curves(layout, ledger, rounds[0], holdout_keys, truth, marks)
    if variants:
        plot_pr(variants, layout.fig5b, title=f"LPC variants, round {rounds[0]} (Fig. 5b)")
        report["lpc_variants"] = {name: {"recall_at_precision": _rap(res), "ap": round(res.ap, 4)}
                                  for name, res in variants.items()}
    _montage(layout, dataset, ledger, holdout_keys, holdout_truth)
    if layout.table3_json.is_file():  # benchmarks/table3.py has been run for this harvest
        report["table3"] = json.loads(layout.table3_json.read_text())
    atomic_write_text(layout.report_json, json.dumps(report, indent=1))
    atomic_write_text(layout.report_md, render_markdown(report, froc_rows))
    ledger.close()
    return report


def _support(info: dict) -> dict:
    """What a round's threshold rests on (V_M's new lesions and false positives above it, over how
    many volumes; older runs: None), and how many fully annotated volumes with the same yield would
    lift its 95% lower bound on the precision to 0.90 (None where no number would)."""
    support = {k: info.get(k) for k in ("vm_new_lesions_above", "vm_false_positives_above", "precision_lower_bound",
                                        "vm_volumes")}
    tp, fp, volumes = support["vm_new_lesions_above"], support["vm_false_positives_above"], support["vm_volumes"]
    support["volumes_for_0.90"] = (volumes_for_lower_bound(tp, fp, volumes, CERTIFY)
                                   if None not in (tp, fp, volumes) else None)
    return support


def _variant_curves(layout: RunLayout, ledger: Ledger, r: int, holdout_keys: list[str],
                    truth: dict[str, VolumeTruth], marks: dict[str, list[Tracklet]]) -> dict[str, EvaluationResult]:
    path = layout.lpc_variants(r)
    if not path.is_file():
        return {}
    variants = json.loads(path.read_text())
    rows = [row for row in ledger.proposals(r, volumes=holdout_keys) if row.status not in KNOWN]
    curves = {}

    def curve(score_of) -> EvaluationResult:
        extra = group_by_volume((row.volume, row.tracklet.with_objectness(score_of(row))) for row in rows)
        return evaluate_detections(truth, with_marks(marks, extra))

    curves["s_g (LPG objectness)"] = curve(lambda row: row.objectness)
    curves["s_c multi-view"] = curve(lambda row: row.lpc or 0.0)
    curves["s_g*s_c multi-view"] = curve(lambda row: row.score or 0.0)
    for name, scores in variants.items():
        label = VARIANTS.get(name).label
        curves[f"s_c {label}"] = curve(lambda row, s=scores: s.get(f"{row.volume}#{row.idx}", 0.0))
        curves[f"s_g*s_c {label}"] = curve(lambda row, s=scores: row.objectness * s.get(f"{row.volume}#{row.idx}", 0.0))
    return curves


def _montage(layout: RunLayout, dataset: DeepLesionDataset, ledger: Ledger, holdout_keys: list[str],
             holdout_truth: dict[str, list[SliceBox]], n: int = 8) -> None:
    """Harvested lesions (blue) with the marks of the volume (green): first, key and last slice."""
    path = layout.harvested
    if not path.is_file():
        return
    harvested = read_tracklets(path)
    chosen = [(k, t) for k in holdout_keys for t in harvested.get(k, [])][:n]
    if len(chosen) < n:
        chosen += [(k, t) for k, ts in harvested.items() if k not in set(holdout_keys) for t in ts][: n - len(chosen)]
    if not chosen:
        return
    fig = Figure(figsize=(9, 3.2 * len(chosen)), layout="constrained")
    axes = fig.subplots(len(chosen), 3, squeeze=False)
    marks = dataset.marks([k for k, _ in chosen])
    for row_axes, (key, t) in zip(axes, chosen):
        volume = dataset.load(key)
        b = t.box_3d()
        x1, y1, x2, y2 = b.box_xyxy_px
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        half = max(40.0, 1.5 * max(x2 - x1, y2 - y1))
        correct = None
        if key in holdout_truth:
            correct = bool(match_known([t], holdout_truth[key])[0])
        for ax, (label, i) in zip(row_axes, (("first", 0), ("key", t.key_index), ("last", len(t.z_indices) - 1))):
            z = int(t.z_indices[i])
            ax.imshow(window_image(volume.hu_zyx[z], DISPLAY_WINDOWS_HU["default"]), cmap="gray", vmin=0, vmax=1)
            bx = t.boxes_xyxy_px[i]
            ax.add_patch(Rectangle((bx[0], bx[1]), bx[2] - bx[0], bx[3] - bx[1],
                                   fill=False, edgecolor="deepskyblue", lw=1.5))
            for m in marks.get(key, []):
                if m.z_index == z:
                    (a, b_, c, d), (e, f, g, h) = m.long_axis_px, m.short_axis_px
                    ax.plot([a, c], [b_, d], color="red", lw=1)
                    ax.plot([e, g], [f, h], color="blue", lw=1)
                    mx = m.box_xyxy_px
                    ax.add_patch(Rectangle((mx[0], mx[1]), mx[2] - mx[0], mx[3] - mx[1],
                                           fill=False, edgecolor="lime", lw=1))
            ax.set_xlim(cx - half, cx + half)
            ax.set_ylim(cy + half, cy - half)
            ax.set_title(f"{key} z={z} ({label})", fontsize=7)
            ax.axis("off")
        verdict = "" if correct is None else (", matches a complete label" if correct
                                               else ", matches no complete label (P3D IoU < 0.5)")
        row_axes[0].set_title(f"s={t.score:.2f}{verdict}\n{row_axes[0].get_title()}", fontsize=7,
                              color="red" if correct is False else "black")
    fig.suptitle("harvested lesions (blue) and RECIST marks (green, with red/blue axes): first, key and last slice",
                 fontsize=8)
    save_figure(fig, layout.fig6, dpi=90)


def _certificate_lines(report: dict) -> list[str]:
    """What each round's certificate is worth, and the fully annotated volumes a bound of 0.90 needs."""
    lines = []
    for e in report["rounds"]:
        support = e.get("vm_support") or {}
        volumes, needed = support.get("vm_volumes"), support.get("volumes_for_0.90")
        if volumes is None or support.get("precision_lower_bound") is None:
            continue
        tp, fp = support["vm_new_lesions_above"], support["vm_false_positives_above"]
        if needed is None:
            how = ("no number of volumes would: "
                   + ("no V_M lesion lies above it" if tp == 0 else f"its precision on V_M is {tp / (tp + fp):.2f}"))
        else:
            how = (f"about {needed} fully annotated volumes with the same yield would ({max(needed - volumes, 0)} "
                   "more)")
        lines.append(f"- Round {e['round']}: {tp} new lesions and {fp} false positives above the threshold on "
                     f"{volumes} V_M volumes bound its precision at >= {support['precision_lower_bound']:.2f} (95%); "
                     f"for >= {CERTIFY:.2f}, {how}.")
    return ["", "What the certificate is worth:", ""] + lines if lines else []


def _precision_table(report: dict) -> list[str]:
    """Markdown: per round, the estimated precision of the new proposals above the threshold (each
    rule the run could use, with its 95% interval) beside the true precision on V_H^test."""
    rules = [rule for rule in RULES if any(rule in e.get("estimated_precision", {}) for e in report["rounds"])]
    if not rules:
        return []

    def cell(estimate: dict | None) -> str:
        if not estimate:
            return "-"
        text = "-"
        if estimate.get("precision") is not None:
            interval = estimate.get("interval")
            text = f"{estimate['precision']:.3f}" + (f" [{interval[0]:.2f}, {interval[1]:.2f}]" if interval else "")
        if "own_threshold" in estimate:  # the threshold this rule would have set, and its estimate there
            own = estimate["own_threshold"]
            text += "; own threshold " + ("none" if own is None else
                                          f"{own:.3f} ({estimate['precision_at_own_threshold']:.3f})")
        return text

    names = {"vm": "V_M count", "marks": "held-out marks", "combined": "pooled", "fp_rate": "V_M's false-positive rate",
             "vm_and_fp_rate": "the lower of V_M's count and its false-positive rate"}
    lines = ["", "## Precision of the harvested lesions: estimated and true", "",
             "| round | threshold rule | " + " | ".join(f"estimated: {names[r]}" for r in rules)
             + " | true on V_H^test (harvested there) |", "|---" * (len(rules) + 3) + "|"]
    for e in report["rounds"]:
        truth = e.get("true_precision_holdout") or {}
        true_cell = "-" if truth.get("precision") is None else f"{truth['precision']:.3f} ({truth['n_harvested']})"
        lines.append(f"| {e['round']} | {e.get('threshold_rule', 'vm')} | "
                     + " | ".join(cell(e["estimated_precision"].get(r)) for r in rules) + f" | {true_cell} |")
    lines += ["", "Estimates are of the new proposals at or above the round's threshold (95% intervals: the "
                  "wider of a bootstrap over volumes and the exact binomial interval of the counts), then the "
                  "threshold each rule would have set and its estimate there; 'held-out marks' counts the lesions "
                  "found on the calibration volumes' marks, corrected for lesion size "
                  "with V_M's marked share; 'V_M's false-positive rate' subtracts from V_H's new proposals the "
                  "false positives that V_M's rate per volume predicts (harvest/precision.py)."]
    return lines


def render_markdown(report: dict, froc_rows) -> str:
    levels = ["0.8", "0.85", "0.9", "0.95"]
    om = report["original_marks"]
    lines = [
        "# Lesion harvest report",
        "",
        f"Holdout V_H^test: {report['holdout_volumes']} volumes, {report['holdout_lesions']} lesions "
        f"(complete labels, used for this report only). Elapsed: {report['elapsed_s'] / 60:.1f} min.",
        "",
        "## Table I: recall at precision on V_H^test",
        "",
        "| label set | R@80P | R@85P | R@90P | R@95P |",
        "|---|---|---|---|---|",
        f"| R (original marks) | {om['recall']:.3f} @ {100 * om['precision']:.0f}P | | | |",
    ]
    for entry in report["rounds"]:
        r = entry["round"]
        if r == report["rounds"][0]["round"]:
            vals = entry["lpg"]["recall_at_precision"]
            lines.append(f"| R + P_H,{r} (LPG only) | " + " | ".join(f"{vals[k]:.3f}" for k in levels) + " |")
        vals = entry["lpg_lpc"]["recall_at_precision"]
        scored_by = "LPG alone: no LPC" if entry.get("no_lpc_because") else "LPG+LPC"
        lines.append(f"| R + P_H,{r}^+ ({scored_by}, round {r}) | " + " | ".join(f"{vals[k]:.3f}" for k in levels)
                     + " |")
    lines += ["", "## Rounds", "",
              "| round | lesion score s_g * s_c^w: w | threshold (95% precision on V_M) | "
              "V_M above it: new lesions / false positives (precision >=, 95% confidence) | harvested P_H^+ | "
              "new lesions | hard negatives P_H^- |",
              "|---|---|---|---|---|---|---|"]
    for entry in report["rounds"]:
        t = "none" if entry["threshold"] is None else f"{entry['threshold']:.3f}"
        support = entry.get("vm_support") or {}
        if support.get("precision_lower_bound") is None:
            evidence = "(not recorded)"
        else:
            evidence = (f"{support['vm_new_lesions_above']} / {support['vm_false_positives_above']} "
                        f"(>= {support['precision_lower_bound']:.2f})")
        w = "no LPC (s = s_g)" if entry.get("no_lpc_because") else f"{entry.get('fusion_exponent', 1.0):g}"
        lines.append(f"| {entry['round']} | {w} | {t} | {evidence} | "
                     f"{entry['n_harvested']} | {entry['n_new']} | {entry['n_hard_negatives']} |")
    lines += ["", "The threshold is measured on V_M's proposals that do not cover one of V_M's original RECIST "
                  "marks (in V_H only such proposals can be harvested). With few V_M lesions above it the 95% is "
                  "an estimate; the confidence bound says how far V_M supports it."]
    lines += _certificate_lines(report)
    lines += [f"\n**Round {e['round']} had no LPC:** {e['no_lpc_because']}; its proposals were ranked by the LPG "
              "alone (s = s_g, as if s_c = 1)." for e in report["rounds"] if e.get("no_lpc_because")]
    lines += [f"\n**Round {e['round']} harvested nothing:** {e['nothing_harvested_because']}" for e in report["rounds"]
              if e.get("nothing_harvested_because")]
    lines += _precision_table(report)
    if "harvested_labels" in report:
        h = report["harvested_labels"]
        alone = h.get("harvested_precision")
        lines += ["", f"Harvested labels (original marks + harvested.pkl) on V_H^test: precision {h['precision']:.3f}, "
                      f"recall {h['recall']:.3f} ({h['n_harvested_in_holdout']} harvested there, "
                      f"{h['n_harvested_total']} in all of V_H"
                      + (f"; the harvested lesions alone are {alone:.3f} precise" if alone is not None else "") + ")."]
    rates = ["0.125", "0.25", "0.5", "1", "2", "4", "8"]
    lines += ["", "## LPG FROC on V_H^test per round (Table II style)", "",
              "| round | " + " | ".join(f"{r} FP" for r in rates) + " |", "|---" * (len(rates) + 1) + "|"]
    for r, froc in froc_rows:
        lines.append(f"| {r} | " + " | ".join(f"{froc.froc[k]:.3f}" for k in rates) + " |")
    if "lpc_variants" in report:
        lines += ["", "## LPC variants, round 1 (Fig. 5b): recall at precision", "",
                  "| score | R@80P | R@85P | R@90P | R@95P | AP |", "|---|---|---|---|---|---|"]
        for name, v in report["lpc_variants"].items():
            vals = v["recall_at_precision"]
            lines.append(f"| {name} | " + " | ".join(f"{vals[k]:.3f}" for k in levels) + f" | {v['ap']:.3f} |")
    if "table3" in report:
        lines += render_table3(report["table3"])
    figures = ["![Fig. 5a](fig5a_pr.png)"]
    if "lpc_variants" in report:  # drawn only where round 1 trained the Fig. 5b variants
        figures.append("![Fig. 5b](fig5b_lpc_variants.png)")
    lines += ["", "## Figures", ""] + [line for figure in figures + ["![Fig. 6](fig6_harvested.png)"]
                                       for line in (figure, "")]
    return "\n".join(lines)
