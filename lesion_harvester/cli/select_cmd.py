"""``lesion-harvester select RUN --budget K``: the volumes of V_H to annotate fully next."""

from __future__ import annotations

from lesion_harvester.cli.common import add_subcommand


def add_parser(sub) -> None:
    from lesion_harvester.harvest.select import STRATEGIES

    p = add_subcommand(
        sub, "select", "choose the volumes of a harvest's V_H a radiologist should annotate fully next",
        "Reads the last finished round's proposals and scores and writes RUN/selection.json: the K volumes\n"
        "in order, each with its reason; 'review' lists them in that order under 'Annotate fully'. Never\n"
        "a holdout (V_H^test), validation or fully annotated volume. Strategies: random (a seeded draw, the\n"
        "baseline), uncertainty (most proposals near the round's threshold), disagreement (LPG and LPC\n"
        "disagree most), lesion_rich (most marks and expected lesions: more for the threshold to rest on),\n"
        "coverage (a spread of volumes by their proposals' scores). Whether any beats random is measured\n"
        "by benchmarks/labor_budget.py (benchmarks/RESULTS.md).",
        ["lesion-harvester select runs/harvest --budget 10",
         "lesion-harvester select runs/harvest --budget 10 --strategy uncertainty"])
    p.add_argument("run", help="harvest run folder")
    p.add_argument("--budget", type=int, required=True, metavar="K", help="how many volumes to choose")
    p.add_argument("--strategy", default="random", choices=STRATEGIES, help="how to choose (default random)")
    p.add_argument("--seed", type=int, default=0, help="the random strategy's seed (default 0)")
    p.add_argument("--round", type=int, default=None, help="the round whose proposals are read (default: the last)")
    p.set_defaults(handler=run)


def run(args) -> int:
    from lesion_harvester.harvest.select import select_for_run
    from lesion_harvester.paths import RunLayout

    chosen = select_for_run(args.run, args.budget, args.strategy, args.seed, args.round)
    for c in chosen:
        print(f"{c.rank:3d}  {c.volume}  {c.reason}")
    print(f"wrote {RunLayout(args.run).selection} ({len(chosen)} volumes, strategy {args.strategy})")
    return 0
