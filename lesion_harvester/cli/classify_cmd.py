"""``lesion-harvester classify DATA --checkpoint LPC.pt --proposals DETS.pkl --out SCORED.pkl``."""

from __future__ import annotations

from lesion_harvester.cli.common import add_cache_option, add_device_option, add_subcommand


def add_parser(sub) -> None:
    p = add_subcommand(
        sub, "classify", "score 3D proposals with a trained LPC (fused score s_g * s_c)",
        "Writes the proposals with every 2D score multiplied by the LPC's lesion probability s_c, so that a\n"
        "tracklet's objectness becomes s = s_g * s_c, and a CSV with s_g, s_c and s per proposal. A harvest's\n"
        "fold models (RUN/round_N/lpc/foldK.pt) work too.",
        ["lesion-harvester classify data/bench --checkpoint lpc.pt --proposals dets.pkl --out scored.pkl"])
    p.add_argument("data", help="DeepLesion folder, NIfTI or DICOM (the volumes of the proposals)")
    p.add_argument("--checkpoint", required=True, help="LPC checkpoint (from train-lpc or a harvest)")
    p.add_argument("--proposals", required=True, help="tracklet pickle of 3D proposals (from propose)")
    p.add_argument("--out", required=True, help="scored tracklets; a CSV with s_g, s_c and s is written beside")
    add_device_option(p)
    add_cache_option(p)
    p.set_defaults(handler=run)


def run(args) -> int:
    from lesion_harvester.lpc.api import classify_proposals

    scored = classify_proposals(args.data, args.checkpoint, args.proposals, args.out, args.device,
                                args.cache_dir)
    print(f"scored {sum(len(v) for v in scored.values())} proposals; wrote {args.out}")
    return 0
