"""``lesion-harvester classify DATA --checkpoint LPC.pt --proposals DETS.pkl --out SCORED.pkl``."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("classify", help="score 3D proposals with a trained LPC (fused score s_g * s_c)")
    p.add_argument("data", help="DeepLesion folder, NIfTI or DICOM (the volumes of the proposals)")
    p.add_argument("--checkpoint", required=True, help="LPC checkpoint (from train-lpc)")
    p.add_argument("--proposals", required=True)
    p.add_argument("--out", required=True, help="scored tracklets; a CSV with s_g, s_c and s is written beside")
    p.add_argument("--device", default="cpu")
    p.set_defaults(handler=run)


def run(args) -> int:
    from lesion_harvester.lpc.api import classify_proposals

    scored = classify_proposals(args.data, args.checkpoint, args.proposals, args.out, args.device)
    print(f"scored {sum(len(v) for v in scored.values())} proposals; wrote {args.out}")
    return 0
