"""``lesion-harvester propose DATA --checkpoint CKPT --out DETS.pkl``: 3D lesion proposals."""

from __future__ import annotations

from pathlib import Path

from lesion_harvester.cli.common import add_cache_option, add_device_option, add_subcommand, device_and_ranks


def add_parser(sub) -> None:
    p = add_subcommand(
        sub, "propose", "scan every slice with the LPG (or another detector) and write 3D proposals (tracklets)",
        "Scans every slice of every volume (a DeepLesion folder, NIfTI or DICOM) and stacks the 2D\n"
        "proposals into 3D tracklets with the stacking settings stored in the checkpoint. Boxes are in\n"
        "pixels of the original axial slices (the reoriented array's frame for NIfTI and DICOM). Killed\n"
        "part-way, the same command continues with the volumes not yet scanned. The pickle and its CSV\n"
        "are replaced together; while the scan runs, a second one into the same --out refuses at once\n"
        "(lock file .NAME.lock beside it). Under torchrun the volumes are shared out among the processes\n"
        "and the result is the one-process result. Checkpoints of the other detectors that train-lpg\n"
        "--detector trains (CenterNet, RetinaNet) are scanned the same way.",
        ["lesion-harvester propose data/bench --checkpoint runs/lpg/best.pt --split detection_test --out dets.pkl",
         "lesion-harvester propose scan.nii.gz --checkpoint runs/lpg/best.pt --out dets.pkl --score-threshold 0.3",
         "torchrun --nproc-per-node 4 $(which lesion-harvester) propose data/deeplesion --checkpoint best.pt "
         "--out dets.pkl --device cuda"])
    p.add_argument("data", help="DeepLesion folder, NIfTI file or folder, DICOM file or folder")
    p.add_argument("--checkpoint", required=True, help="LPG (or other detector's) checkpoint (best.pt)")
    p.add_argument("--out", required=True, help="output tracklet pickle (a CSV is written next to it)")
    p.add_argument("--split", default=None, help="DeepLesion layout: a splits.json name or train/val/test")
    p.add_argument("--score-threshold", type=float, default=None,
                   help="t_G: keep 2D proposals above it (default: the checkpoint preset's, 0.1)")
    add_device_option(p)
    p.add_argument("--batch-slices", type=int, default=8, help="target slices per forward pass (default 8)")
    p.add_argument("--loader-workers", type=int, default=0,
                   help="processes preparing the next volumes while the LPG scans (default 0: one thread)")
    p.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp16",
                   help="on CUDA: half precision (fp16, the default, or bf16) or full fp32; the CPU runs fp32")
    p.add_argument("--channels-last", action="store_true", help="NHWC activations (faster on tensor-core GPUs)")
    p.add_argument("--compile", action="store_true", help="torch.compile the network first (pays off on large scans)")
    p.add_argument("--naive", action="store_true", help="compute every slice's context from scratch (for checks)")
    p.add_argument("--flip-test", action="store_true",
                   help="average with the left-right mirrored slices (CenterNet's flip test; twice the compute)")
    add_cache_option(p)
    p.set_defaults(handler=run)


def run(args) -> int:
    from lesion_harvester.config import ScanConfig
    from lesion_harvester.lpg.propose import check_request, propose
    from lesion_harvester.peers.detectors import detector_of_checkpoint

    # the stacking settings travel with the checkpoint (presets differ in their link IoU)
    scan = ScanConfig(batch_slices=args.batch_slices, shared=not args.naive, flip_test=args.flip_test,
                      loader_workers=args.loader_workers, amp=args.precision != "fp32",
                      amp_dtype="bfloat16" if args.precision == "bf16" else "float16",
                      channels_last=args.channels_last, compile=args.compile)
    device, dist = device_and_ranks(args)
    check_request(args.out, args.score_threshold, dist)  # before the checkpoint is read, as propose does
    detector = detector_of_checkpoint(args.checkpoint)
    results = propose(args.data, args.checkpoint, args.out, args.split, None, scan, device, args.cache_dir,
                      progress=not args.quiet, score_threshold=args.score_threshold, dist=dist, detector=detector)
    if not dist.is_main:
        return 0
    n = sum(len(t) for t in results.values())
    print(f"wrote {n} 3D proposals of {len(results)} volumes to {args.out} (and {Path(args.out).with_suffix('.csv')})")
    return 0
