"""``lesion-harvester report RUN``: rebuild a harvest's report.json, report.md and figures."""

from __future__ import annotations

from lesion_harvester.cli.common import add_subcommand

LEVELS = ("0.8", "0.85", "0.9", "0.95")


def add_parser(sub) -> None:
    p = add_subcommand(
        sub, "report", "rebuild the report of a harvest run folder",
        "Reads the run's ledger and outputs (nothing is retrained) and writes report.json, report.md and\n"
        "the figures again; prints Table I.",
        ["lesion-harvester report runs/harvest"])
    p.add_argument("run", help="harvest run folder")
    p.set_defaults(handler=run)


def print_table(report: dict) -> None:
    """Table I of a harvest report (recall at precision on V_H^test), as text."""
    om = report["original_marks"]
    print(f"Table I: recall at precision on V_H^test ({report['holdout_volumes']} volumes, "
          f"{report['holdout_lesions']} lesions)")
    print(f"{'label set':<36}" + "".join(f"{'R@' + str(int(float(k) * 100)) + 'P':>8}" for k in LEVELS))
    print(f"{'R (original marks)':<36}{om['recall']:>8.3f} @ {100 * om['precision']:.0f}% precision")
    for entry in report["rounds"]:
        r = entry["round"]
        if r == report["rounds"][0]["round"]:
            vals = entry["lpg"]["recall_at_precision"]
            print(f"{'R + P_H,' + str(r) + ' (LPG only)':<36}" + "".join(f"{vals[k]:>8.3f}" for k in LEVELS))
        vals = entry["lpg_lpc"]["recall_at_precision"]
        no_lpc = entry.get("no_lpc_because")
        label = f"R + P_H,{r}^+ ({'LPG, no LPC' if no_lpc else 'LPG+LPC'})"
        score = "s_g (no LPC)" if no_lpc else f"s_g*s_c^{entry.get('fusion_exponent', 1.0):g}"
        print(f"{label:<36}" + "".join(f"{vals[k]:>8.3f}" for k in LEVELS)
              + f"   harvested {entry['n_harvested']}, new {entry['n_new']}, score {score}")
        if no_lpc:
            print(f"  round {r} had no LPC: {no_lpc}")
        if entry.get("nothing_harvested_because"):
            print(f"  round {r} harvested nothing: {entry['nothing_harvested_because']}")
    if "harvested_labels" in report:
        h = report["harvested_labels"]
        print(f"harvested labels (marks + harvested.pkl) on V_H^test: precision {h['precision']:.3f}, "
              f"recall {h['recall']:.3f}")


def run(args) -> int:
    from lesion_harvester.paths import RunLayout
    from lesion_harvester.report.harvest_report import build_report

    print_table(build_report(args.run))
    print(f"\nreport: {RunLayout(args.run).report_md}")
    return 0
