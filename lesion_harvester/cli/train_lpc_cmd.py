"""``lesion-harvester train-lpc DATA --proposals DETS.pkl --out LPC.pt``: train the proposal classifier."""

from __future__ import annotations

import dataclasses
import json


def add_parser(sub) -> None:
    p = sub.add_parser("train-lpc", help="train the lesion proposal classifier on verified proposals")
    p.add_argument("data", help="DeepLesion-layout folder")
    p.add_argument("--proposals", required=True, help="3D proposals of V_M and V_H (from propose)")
    p.add_argument("--out", required=True, help="LPC checkpoint to write")
    p.add_argument("--preset", default="demo")
    p.add_argument("--variant", choices=("multiview", "axial", "3d"), default=None, help="default: the preset's")
    p.add_argument("--fully-annotated", default=None, help="complete labels of V_M (real DeepLesion layout)")
    p.add_argument("--device", default="cpu")
    p.set_defaults(handler=run)


def run(args) -> int:
    from lesion_harvester.config import load_preset
    from lesion_harvester.harvest.steps import train_lpc_on_proposals

    preset = load_preset(args.preset)
    if args.variant:
        preset = dataclasses.replace(preset, lpc=dataclasses.replace(preset.lpc, variant=args.variant))
    counts = train_lpc_on_proposals(args.data, args.proposals, args.out, preset, args.fully_annotated, args.device)
    print(json.dumps(counts))
    print(f"wrote {args.out}")
    return 0
