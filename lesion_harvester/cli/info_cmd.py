"""``lesion-harvester info CKPT``: what a checkpoint says about itself."""

from __future__ import annotations

from lesion_harvester.cli.common import add_subcommand


def add_parser(sub) -> None:
    p = add_subcommand(
        sub, "info", "print what a checkpoint records: versions, settings, training data",
        "Reads an LPG, LPC or RetinaNet checkpoint (weights_only: the file runs no code) and prints its\n"
        "format, the lesion-harvester, torch, MONAI and Python versions it was written with, its model,\n"
        "preprocessing and stacking settings, the preset, the training data (folder, digest of DL_info.csv,\n"
        "extra inputs) and fingerprint, the epoch and validation score, and its number of parameters.",
        ["lesion-harvester info runs/harvest/round_3/lpg/best.pt",
         "lesion-harvester info runs/harvest/round_1/lpc/fold0.pt"])
    p.add_argument("checkpoint", help="a .pt file written by lesion-harvester")
    p.set_defaults(handler=run)


def run(args) -> int:
    import yaml

    from lesion_harvester.io.torch_files import checkpoint_summary

    summary = checkpoint_summary(args.checkpoint)
    print(f"# {args.checkpoint}")
    print(yaml.safe_dump(summary, sort_keys=False, default_flow_style=None, width=110).rstrip())
    return 0
