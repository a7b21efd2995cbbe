"""``lesion-harvester train-lpg DATA --out CKPT_DIR``: train the lesion proposal generator."""

from __future__ import annotations

import json
from pathlib import Path

from lesion_harvester.cli.common import (
    add_cache_option,
    add_device_option,
    add_preset_options,
    add_subcommand,
    device_and_ranks,
    preset_from_args,
)
from lesion_harvester.errors import ConfigError
from lesion_harvester.harvest.label_sets import LABEL_SETS, label_set
from lesion_harvester.structures import LabelSet


def add_parser(sub) -> None:
    p = add_subcommand(
        sub, "train-lpg", "train the lesion proposal generator (multi-slice CenterNet)",
        "Trains on the RECIST marks of the training volumes and the complete labels of V_M, with optional\n"
        "extra positives and hard negatives (the HNSL). Writes best.pt (best validation epoch), last.pt\n"
        "(for resuming), train_log.json, config.yaml and train.log into CKPT_DIR; run the same command\n"
        "again after a kill and it continues after the last finished epoch. While it trains, CKPT_DIR is\n"
        "locked (CKPT_DIR/.lock): a second training into it refuses at once.\n\n"
        "--from-harvest RUN --labels R|R+P|R+P+N trains on a label set of the paper's Table III, read from a\n"
        "harvest run folder: R (the marks and V_M's labels, as round 1), R+P (and the harvested lesions,\n"
        "harvested.pkl) or R+P+N (and the hard negatives, hard_negatives.pkl, through the HNSL); DATA and\n"
        "V_M's labels are then the harvest's own. Extra positives that are marked lesions already are left out.\n\n"
        "--detector NAME trains another registered detector on the same crops and schedule: CenterNet (the\n"
        "MSCN on 3 slices, Table III's) or RetinaNet (MONAI's, the peer of Table III; no hard negatives, and\n"
        "best.pt is its last epoch); propose scans any of them.\n\n"
        "Under torchrun each process draws its share of every batch (DistributedDataParallel, batch norm\n"
        "over the whole batch): N processes train what one does; the batch size must be a multiple of N.",
        ["lesion-harvester train-lpg data/bench --out runs/lpg --preset bench",
         "lesion-harvester train-lpg --from-harvest runs/harvest --labels R+P+N --out runs/lpg_rpn --preset bench",
         "lesion-harvester train-lpg --from-harvest runs/harvest --labels R --out runs/cn_r --set lpg.num_slices=3",
         "lesion-harvester train-lpg --from-harvest runs/harvest --labels R+P --out runs/rn_rp --detector RetinaNet",
         "lesion-harvester train-lpg data/demo --out runs/quick --set lpg_train.epochs=2 --device cpu",
         "lesion-harvester train-lpg DeepLesion/ --out runs/dl --preset paper --fully-annotated Revised-Train744.pkl",
         "torchrun --nproc-per-node 4 $(which lesion-harvester) train-lpg DeepLesion/ --out runs/dl --preset paper "
         "--device cuda"])
    p.add_argument("data", nargs="?", default=None,
                   help="DeepLesion-layout folder (synthetic or real); with --from-harvest, the harvest's")
    p.add_argument("--out", required=True, help="checkpoint folder: best.pt, last.pt, train_log.json, train.log")
    add_preset_options(p)
    p.add_argument("--fully-annotated", default=None, help="complete labels of V_M (e.g. Revised-Train744.pkl)")
    p.add_argument("--extra-positives", default=None, help="tracklet or 3D-box pickle of more lesions")
    p.add_argument("--hard-negatives", default=None, help="tracklet or 3D-box pickle of hard negatives (HNSL)")
    p.add_argument("--from-harvest", default=None, metavar="RUN",
                   help="harvest run folder whose label set (--labels) to train on")
    p.add_argument("--labels", default=None, choices=LABEL_SETS,
                   help="Table III label set of --from-harvest: R, R+P (harvested lesions), R+P+N (and hard negatives)")
    p.add_argument("--init", default=None, help="start from this checkpoint's weights (fine-tuning)")
    p.add_argument("--detector", default="MSCN",
                   help="the detector to train: MSCN (the LPG, default), CenterNet, RetinaNet")
    add_device_option(p)
    add_cache_option(p)
    p.set_defaults(handler=run)


def run(args) -> int:
    from lesion_harvester.lpg.train import TrainingOptions, train_detector
    from lesion_harvester.paths import TrainLayout
    from lesion_harvester.peers.detectors import DETECTORS

    labels = _labels(args)
    preset = preset_from_args(args, builds_lpg=True)
    detector = DETECTORS.get(args.detector)
    device, dist = device_and_ranks(args)
    summary = train_detector(detector, labels, preset, args.out, TrainingOptions(
        device, args.init, args.cache_dir, progress=not args.quiet, drop_known_positives=True, dist=dist))
    if not dist.is_main:
        return 0
    last = summary["history"][-1] if summary["history"] else {}
    print(json.dumps({"best_validation_score": summary["best_score"], "kept_epoch": summary["kept_epoch"],
                      "epochs": summary["epochs"],
                      "elapsed_s": summary["elapsed_s"], "last_epoch": last}, indent=1))
    print(f"kept checkpoint (epoch {summary['kept_epoch']}): {TrainLayout(args.out).best}")
    return 0


def _labels(args) -> LabelSet:
    """DATA and the annotation files: given one by one, or a label set of a harvest run."""
    given = {"fully_annotated": args.fully_annotated, "extra_positives": args.extra_positives,
             "hard_negatives": args.hard_negatives}
    if args.from_harvest is None:
        if args.labels:
            raise ConfigError("--labels needs --from-harvest RUN")
        if args.data is None:
            raise ConfigError("give DATA (a DeepLesion-layout folder) or --from-harvest RUN --labels SET")
        return LabelSet("", Path(args.data), **given)
    used = [f"--{k.replace('_', '-')}" for k, v in given.items() if v]
    if used:
        raise ConfigError(f"--from-harvest reads V_M's labels and the label set from the run; drop {', '.join(used)}")
    if args.labels is None:
        raise ConfigError(f"--from-harvest needs --labels ({', '.join(LABEL_SETS)})")
    chosen = label_set(args.from_harvest, args.labels)
    if args.data is not None and Path(args.data).resolve() != chosen.data.resolve():
        raise ConfigError(f"{args.from_harvest} harvested {chosen.data}, not {args.data}; leave DATA out")
    return chosen
