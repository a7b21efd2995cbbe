"""``lesion-harvester detect INPUT... --checkpoint CKPT --out DIR``: lesions in the user's own scans."""

from __future__ import annotations

from lesion_harvester.cli.common import add_device_option, add_subcommand, device_and_ranks


def add_parser(sub) -> None:
    p = add_subcommand(
        sub, "detect", "find lesions in CT scans and write findings, a label map and a montage per scan",
        "INPUT: a NIfTI file, a DICOM folder (one or many series; non-CT files are skipped with a warning,\n"
        "single images such as localizers are skipped with a note) or a DeepLesion folder. Each scan gets\n"
        "OUT/<volume id>/ with findings.json and findings.csv (each lesion's score, 3D box and centre in\n"
        "the input's voxels and in world mm, RAS for NIfTI and LPS for DICOM, long and short side in mm,\n"
        "slice range, per-slice boxes), labels.nii.gz (one label per finding on the input's own grid and\n"
        "affine: opens over the scan in 3D Slicer or ITK-SNAP) and montage.png (the top findings at the\n"
        "lung, soft-tissue and bone windows); with --dicom-seg, findings_seg.dcm for DICOM inputs. A scan's\n"
        "folder appears only when complete; a rerun skips the scans already written. Under torchrun the\n"
        "scans are shared out among the processes.",
        ["lesion-harvester detect scan.nii.gz --checkpoint runs/harvest/round_3/lpg/best.pt --out findings/",
         "lesion-harvester detect dicom_export/ b.nii.gz --checkpoint best.pt --out findings/ --score-threshold 0.5"])
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="NIfTI file, DICOM file or folder, DeepLesion folder")
    p.add_argument("--checkpoint", required=True, help="LPG checkpoint (best.pt of train-lpg or a harvest round)")
    p.add_argument("--out", required=True, help="output folder (one sub-folder per scan)")
    p.add_argument("--score-threshold", type=float, default=None,
                   help="report findings scoring at least this (default 0.3)")
    p.add_argument("--dicom-seg", action="store_true",
                   help="also write findings_seg.dcm for DICOM inputs: a DICOM Segmentation (one segment per "
                        "finding) referring to the source series, for PACS viewers")
    add_device_option(p)
    p.set_defaults(handler=run)


def run(args) -> int:
    from lesion_harvester.detect.detector import DEFAULT_MIN_SCORE, Detector
    from lesion_harvester.detect.run import detect_files

    min_score = DEFAULT_MIN_SCORE if args.score_threshold is None else args.score_threshold
    device, dist = device_and_ranks(args)
    detector = Detector.from_checkpoint(args.checkpoint, device=device, min_score=min_score)
    written = 0
    rank = f"[rank {dist.rank}] " if dist.active else ""
    for result in detect_files(args.inputs, detector, args.out, progress=not args.quiet, dicom_seg=args.dicom_seg,
                               dist=dist):
        if result.runtime_s is None:
            print(f"{rank}{result.volume_id} ({result.input}): {result.note}")
            continue
        written += 1
        note = f" ({result.note})" if result.note else ""
        print(f"{rank}{result.volume_id}: {result.findings} findings in {result.runtime_s:.1f} s -> {result.folder}"
              f"{note}")
    written = sum(dist.gather(written))
    if dist.is_main:
        print(f"wrote {written} scans to {args.out}")
    return 0
