"""``lesion-harvester train-lpc DATA --proposals DETS.pkl --out LPC.pt``: train the proposal classifier."""

from __future__ import annotations

import dataclasses
import json
import typing

from lesion_harvester.cli.common import (
    add_cache_option,
    add_device_option,
    add_preset_options,
    add_subcommand,
    preset_from_args,
)
from lesion_harvester.config import LPCVariant


def add_parser(sub) -> None:
    p = add_subcommand(
        sub, "train-lpc", "train the lesion proposal classifier on verified proposals",
        "Verifies the proposals as a harvest round does (P_M^R and P_M^- against V_M's complete labels,\n"
        "P_H^R against V_H's RECIST marks) and trains one LPC on them, as a harvest's LPC is trained.",
        ["lesion-harvester train-lpc data/bench --proposals dets.pkl --out lpc.pt --preset bench",
         "lesion-harvester train-lpc data/bench --proposals dets.pkl --out lpc_3d.pt --variant 3d"])
    p.add_argument("data", help="DeepLesion-layout folder")
    p.add_argument("--proposals", required=True, help="3D proposals of V_M and V_H (from propose)")
    p.add_argument("--out", required=True, help="LPC checkpoint to write")
    add_preset_options(p)
    p.add_argument("--variant", choices=typing.get_args(LPCVariant), default=None, help="default: the preset's")
    p.add_argument("--fully-annotated", default=None, help="complete labels of V_M (real DeepLesion layout)")
    add_device_option(p)
    add_cache_option(p)
    p.set_defaults(handler=run)


def run(args) -> int:
    from lesion_harvester.harvest.steps import train_lpc_on_proposals

    preset = preset_from_args(args)
    if args.variant:
        preset = dataclasses.replace(preset, lpc=dataclasses.replace(preset.lpc, variant=args.variant))
    counts = train_lpc_on_proposals(args.data, args.proposals, args.out, preset, args.fully_annotated, args.device,
                                    progress=not args.quiet, cache_dir=args.cache_dir)
    print(json.dumps(counts))
    print(f"wrote {args.out}")
    return 0
