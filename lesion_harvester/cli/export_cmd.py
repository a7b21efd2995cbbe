"""``lesion-harvester export RUN --reviewed OUT.pkl``: the reviewers' complete labels in the authors' format."""

from __future__ import annotations

from lesion_harvester.cli.common import add_subcommand


def add_parser(sub) -> None:
    p = add_subcommand(
        sub, "export", "write what reviewers verified in a harvest run, in the authors' formats",
        "--reviewed OUT.pkl: the complete labels of V_M, the given ones and the volumes reviewers marked\n"
        "fully annotated (their marks, accepted and drawn lesions), as 2D boxes {key: {z: [[x1, y1, x2,\n"
        "y2, z, z], ...]}} like the released Revised-Train744.pkl, with a CSV beside it; usable as\n"
        "'harvest --fully-annotated OUT.pkl' for a new harvest. Beside it, OUT.verified_lesions.pkl (and\n"
        ".csv): the lesions reviewers accepted, adjusted or drew in volumes nobody marked fully\n"
        "annotated, in the same format; true lesions but not complete labels, so not in OUT.pkl.\n"
        "Rejected proposals are not exported (the next harvest round uses them as hard negatives).",
        ["lesion-harvester export runs/harvest --reviewed runs/harvest/reviewed_v_m.pkl"])
    p.add_argument("run", help="harvest run folder")
    p.add_argument("--reviewed", required=True, metavar="OUT.pkl", help="where to write V_M's complete labels")
    p.add_argument("--data", help="the dataset (default: the one the harvest recorded)")
    p.add_argument("--annot-suffix", action="store_true", help="keys end in '.annot', as the released files")
    p.set_defaults(handler=run)


def run(args) -> int:
    from lesion_harvester.review.export import export_reviewed

    counts = export_reviewed(args.run, args.reviewed, args.data, annot_suffix=args.annot_suffix)
    print(f"wrote {args.reviewed}: {counts['volumes']} fully annotated volumes ({counts['reviewed']} reviewed), "
          f"{counts['lesions']} lesions")
    print(f"wrote {counts['verified_file']}: {counts['verified_lesions']} verified lesions in "
          f"{counts['verified_volumes']} volumes not marked fully annotated (not complete labels, so not in "
          f"{args.reviewed})")
    if counts["rejected"]:
        print(f"not exported: {counts['rejected']} proposals reviewers rejected (the next harvest round trains on "
              "them as hard negatives)")
    return 0
