"""``lesion-harvester train-lpg DATA --out CKPT_DIR``: train the lesion proposal generator."""

from __future__ import annotations

import json

from lesion_harvester.cli.common import add_device_option, add_preset_options, add_subcommand, preset_from_args


def add_parser(sub) -> None:
    p = add_subcommand(
        sub, "train-lpg", "train the lesion proposal generator (multi-slice CenterNet)",
        "Trains on the RECIST marks of the training volumes and the complete labels of V_M, with optional\n"
        "extra positives and hard negatives (the HNSL). Writes best.pt (best validation epoch), last.pt\n"
        "(for resuming), train_log.json, config.yaml and train.log into CKPT_DIR; run the same command\n"
        "again after a kill and it continues after the last finished epoch.",
        ["lesion-harvester train-lpg data/bench --out runs/lpg --preset bench",
         "lesion-harvester train-lpg data/demo --out runs/quick --set lpg_train.epochs=2 --device cpu",
         "lesion-harvester train-lpg DeepLesion/ --out runs/dl --preset paper --fully-annotated Revised-Train744.pkl"])
    p.add_argument("data", help="DeepLesion-layout folder (synthetic or real)")
    p.add_argument("--out", required=True, help="checkpoint folder: best.pt, last.pt, train_log.json, train.log")
    add_preset_options(p)
    p.add_argument("--fully-annotated", default=None, help="complete labels of V_M (e.g. Revised-Train744.pkl)")
    p.add_argument("--extra-positives", default=None, help="tracklet or 3D-box pickle of more lesions")
    p.add_argument("--hard-negatives", default=None, help="tracklet or 3D-box pickle of hard negatives (HNSL)")
    p.add_argument("--init", default=None, help="start from this checkpoint's weights (fine-tuning)")
    add_device_option(p)
    p.add_argument("--cache-dir", default=None, help="prepared-volume cache (default DATA/.lesion_harvester_cache)")
    p.set_defaults(handler=run)


def run(args) -> int:
    from lesion_harvester.lpg.train import train_lpg
    from lesion_harvester.paths import TrainLayout

    summary = train_lpg(args.data, args.out, preset_from_args(args), device=args.device,
                        fully_annotated=args.fully_annotated, extra_positives=args.extra_positives,
                        hard_negatives=args.hard_negatives, init=args.init, cache_dir=args.cache_dir,
                        progress=not args.quiet)
    last = summary["history"][-1] if summary["history"] else {}
    print(json.dumps({"best_validation_score": summary["best_score"], "kept_epoch": summary["kept_epoch"],
                      "epochs": summary["epochs"],
                      "elapsed_s": summary["elapsed_s"], "last_epoch": last}, indent=1))
    print(f"kept checkpoint (epoch {summary['kept_epoch']}): {TrainLayout(args.out).best}")
    return 0
