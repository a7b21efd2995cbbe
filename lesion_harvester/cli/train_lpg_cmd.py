"""``lesion-harvester train-lpg DATA --out CKPT_DIR``: train the lesion proposal generator."""

from __future__ import annotations

import json


def add_parser(sub) -> None:
    p = sub.add_parser("train-lpg", help="train the lesion proposal generator (MSCN)")
    p.add_argument("data", help="DeepLesion-layout folder (synthetic or real)")
    p.add_argument("--out", required=True, help="checkpoint folder: best.pt, last.pt, train_log.json")
    p.add_argument("--preset", default="demo", help="tiny, demo, bench, paper or a YAML file (default demo)")
    p.add_argument("--fully-annotated", default=None, help="complete labels of V_M (e.g. Revised-Train744.pkl)")
    p.add_argument("--extra-positives", default=None, help="tracklet or 3D-box pickle of more lesions")
    p.add_argument("--hard-negatives", default=None, help="tracklet or 3D-box pickle of hard negatives (HNSL)")
    p.add_argument("--init", default=None, help="start from this checkpoint's weights (fine-tuning)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--cache-dir", default=None, help="prepared-volume cache (default DATA/.lesion_harvester_cache)")
    p.set_defaults(handler=run)


def run(args) -> int:
    from lesion_harvester.config import load_preset
    from lesion_harvester.lpg.train import train_lpg

    summary = train_lpg(args.data, args.out, load_preset(args.preset), device=args.device,
                        fully_annotated=args.fully_annotated, extra_positives=args.extra_positives,
                        hard_negatives=args.hard_negatives, init=args.init, cache_dir=args.cache_dir)
    last = summary["history"][-1] if summary["history"] else {}
    print(json.dumps({"best_validation_score": summary["best_score"], "epochs": summary["epochs"],
                      "elapsed_s": summary["elapsed_s"], "last_epoch": last}, indent=1))
    print(f"best checkpoint: {args.out}/best.pt")
    return 0
