"""``lesion-harvester propose DATA --checkpoint CKPT --out DETS.pkl``: 3D lesion proposals."""

from __future__ import annotations

from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("propose", help="scan every slice with the LPG and write 3D proposals (tracklets)")
    p.add_argument("data", help="DeepLesion folder, NIfTI file or folder, DICOM file or folder")
    p.add_argument("--checkpoint", required=True, help="LPG checkpoint (best.pt)")
    p.add_argument("--out", required=True, help="output tracklet pickle (a CSV is written next to it)")
    p.add_argument("--split", default=None, help="DeepLesion layout: a splits.json name or train/val/test")
    p.add_argument("--score-threshold", type=float, default=None,
                   help="t_G: keep 2D proposals above it (default: the checkpoint preset's, 0.1)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-slices", type=int, default=8)
    p.add_argument("--naive", action="store_true", help="compute every slice's context from scratch (for checks)")
    p.add_argument("--flip-test", action="store_true",
                   help="average with the left-right mirrored slices (CenterNet's flip test; twice the compute)")
    p.add_argument("--cache-dir", default=None)
    p.set_defaults(handler=run)


def run(args) -> int:
    from lesion_harvester.config import ScanConfig
    from lesion_harvester.errors import ConfigError
    from lesion_harvester.lpg.propose import propose

    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("--device cuda: no CUDA device is available; use --device cpu")
    # the stacking settings travel with the checkpoint (presets differ in their link IoU)
    scan = ScanConfig(batch_slices=args.batch_slices, shared=not args.naive, flip_test=args.flip_test)
    results = propose(args.data, args.checkpoint, args.out, args.split, None, scan, args.device, args.cache_dir,
                      score_threshold=args.score_threshold)
    n = sum(len(t) for t in results.values())
    print(f"wrote {n} 3D proposals of {len(results)} volumes to {args.out} (and {Path(args.out).with_suffix('.csv')})")
    return 0
