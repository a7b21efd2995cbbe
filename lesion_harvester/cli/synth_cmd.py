"""``lesion-harvester synth OUT``: write a synthetic CT dataset in the DeepLesion layout."""

from __future__ import annotations

import dataclasses
import json


def add_parser(sub) -> None:
    p = sub.add_parser("synth", help="generate a synthetic CT benchmark with complete ground truth")
    p.add_argument("out", help="output folder (must not exist or be empty)")
    p.add_argument("--preset", default="demo", help="tiny, demo, bench, paper or a YAML file (default demo)")
    p.add_argument("--volumes", type=int, default=None, help="total volumes (default: the preset's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: the preset's)")
    p.set_defaults(handler=run)


def run(args) -> int:
    from lesion_harvester.config import load_preset
    from lesion_harvester.synth.dataset import write_synthetic_dataset

    cfg = load_preset(args.preset).synth
    if args.volumes is not None:
        cfg = cfg.with_total(args.volumes)
    if args.workers is not None:
        cfg = dataclasses.replace(cfg, workers=max(1, args.workers))
    stats = write_synthetic_dataset(args.out, cfg, seed=args.seed)
    print(
        json.dumps(
            {
                k: stats[k]
                for k in (
                    "volumes",
                    "lesions",
                    "lesions_per_volume",
                    "marked_fraction",
                    "long_diameter_mm",
                    "slices_per_volume",
                )
            },
            indent=1,
        )
    )
    print(f"wrote {args.out} (montage: {args.out}/montage.png)")
    return 0
