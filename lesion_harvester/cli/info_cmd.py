"""``lesion-harvester info CKPT``: what a checkpoint says about itself (and, asked, an LPG's operating
point measured and stored)."""

from __future__ import annotations

from lesion_harvester.cli.common import add_cache_option, add_device_option, add_subcommand

RECORDED = "recorded"  # --measure-operating-point without DATA: the checkpoint's own training data


def add_parser(sub) -> None:
    p = add_subcommand(
        sub, "info", "print what a checkpoint records: versions, settings, training data, operating points",
        "Reads an LPG, LPC or RetinaNet checkpoint (weights_only: the file runs no code) and prints its\n"
        "format, the lesion-harvester, torch, MONAI and Python versions it was written with, its model,\n"
        "preprocessing and stacking settings, the preset, the training data (folder, digest of DL_info.csv,\n"
        "extra inputs) and fingerprint, the epoch and validation score, its number of parameters and, for\n"
        "an LPG, its operating points: the score at 0.5, 1, 2 and 4 false positives per validation volume\n"
        "(what detect --fp-per-volume uses).\n\n"
        "--measure-operating-point [DATA] measures them on DATA's validation volumes (by default the data\n"
        "the LPG trained on) and stores them in the checkpoint, for an LPG trained before training stored\n"
        "them; it scans every validation volume once.",
        ["lesion-harvester info runs/harvest/round_3/lpg/best.pt",
         "lesion-harvester info runs/harvest/round_1/lpc/fold0.pt",
         "lesion-harvester info runs/harvest/round_1/lpg/best.pt --measure-operating-point",
         "lesion-harvester info old/best.pt --measure-operating-point DeepLesion/ "
         "--fully-annotated Revised-Train744.pkl"])
    p.add_argument("checkpoint", help="a .pt file written by lesion-harvester")
    p.add_argument("--measure-operating-point", nargs="?", const=RECORDED, default=None, metavar="DATA",
                   help="measure an LPG's operating points on the validation volumes of DATA (default: its "
                        "training data) and store them in the checkpoint")
    p.add_argument("--fully-annotated", default=None,
                   help="with --measure-operating-point: V_M's labels, which decide the validation volumes of a "
                        "dataset that names none (default: the file the LPG trained with)")
    add_device_option(p)
    add_cache_option(p)
    p.set_defaults(handler=run)


def run(args) -> int:
    import yaml

    from lesion_harvester.io.torch_files import checkpoint_summary
    from lesion_harvester.lpg.checkpoint import FORMAT, checkpoint_operating_point

    if args.measure_operating_point is not None:
        from lesion_harvester.lpg.train import measure_operating_point

        data = None if args.measure_operating_point == RECORDED else args.measure_operating_point
        measure_operating_point(args.checkpoint, data, args.fully_annotated, args.device, args.cache_dir)
    summary = checkpoint_summary(args.checkpoint)
    is_lpg = summary.get("format") == FORMAT
    point = checkpoint_operating_point(args.checkpoint, summary) if is_lpg else None
    summary.pop("operating_point", None)
    print(f"# {args.checkpoint}")
    print(yaml.safe_dump(summary, sort_keys=False, default_flow_style=None, width=110).rstrip())
    if is_lpg:
        print(_operating_point_text(point))
    return 0


def _operating_point_text(point: dict | None) -> str:
    """An LPG's operating points as lines for people (what detect --fp-per-volume N uses)."""
    from lesion_harvester.lpg.checkpoint import describe_rate

    if point is None:
        return ("operating_point: none (trained before training measured them; detect then keeps scores >= 0.3 by "
                "default)\n  measure them: lesion-harvester info CKPT --measure-operating-point [DATA]")
    lines = [f"operating_point:  # detect --fp-per-volume N keeps the findings scoring at least this; P3D on "
             f"{point.get('volumes')} validation volumes with {point.get('lesions')} lesions, epoch "
             f"{point.get('epoch')}",
             f"  truth: {point.get('truth', '')}", f"  data: {point.get('data', '')}",
             f"  stacked_from_2d_score: {point.get('stack_score_threshold')}"]
    lines += [f"  {describe_rate(rate, entry)}" for rate, entry in point["rates"].items()]
    return "\n".join(lines)
