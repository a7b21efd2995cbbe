"""``lesion-harvester detect INPUT... --checkpoint CKPT --out DIR``: lesions in the user's own scans."""

from __future__ import annotations

from lesion_harvester.cli.common import add_device_option, add_subcommand, device_and_ranks


def add_parser(sub) -> None:
    p = add_subcommand(
        sub, "detect", "find lesions in CT scans and write findings, a label map and a montage per scan",
        "INPUT: a NIfTI file, a DICOM folder (one or many series; non-CT files are skipped with a warning,\n"
        "single images such as localizers are skipped with a note) or a DeepLesion folder. Each scan gets\n"
        "OUT/<name>/, named by the NIfTI file, or by the DICOM series (SeriesDescription and SeriesNumber,\n"
        "else its UID), with findings.json and findings.csv (each lesion's score, 3D box and centre in the\n"
        "input's voxels and in world mm, RAS for NIfTI and LPS for DICOM, long and short side in mm, slice\n"
        "range, per-slice boxes, and its input: path, patient ID, study and series UID, or file name),\n"
        "labels.nii.gz (one label per finding on the input's own grid and affine: opens over the scan in\n"
        "3D Slicer or ITK-SNAP; where findings overlap, the higher score owns the voxels) and montage.png\n"
        "(the top findings at the lung, soft-tissue and bone windows, with their world position); with\n"
        "--dicom-seg, findings_seg.dcm for DICOM inputs. OUT/index.json and OUT/index.csv list every scan.\n"
        "A scan's folder appears only when complete; a rerun skips the scans already written.\n\n"
        "Which findings: those scoring at least --score-threshold, or the checkpoint's operating point\n"
        "--fp-per-volume (the score that gave 0.5, 1, 2 or 4 false positives per validation volume when it\n"
        "was trained; 'lesion-harvester info CKPT' shows them). By default the operating point at 1 false\n"
        "positive per volume, or a score of 0.3 for a checkpoint without operating points; the command\n"
        "prints which. Under torchrun the scans are shared out among the processes.",
        ["lesion-harvester detect scan.nii.gz --checkpoint runs/harvest/round_3/lpg/best.pt --out findings/",
         "lesion-harvester detect dicom_export/ b.nii.gz --checkpoint best.pt --out findings/ --fp-per-volume 2",
         "lesion-harvester detect dicom_export/ --checkpoint best.pt --out findings/ --score-threshold 0.5"])
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="NIfTI file, DICOM file or folder, DeepLesion folder")
    p.add_argument("--checkpoint", required=True, help="LPG checkpoint (best.pt of train-lpg or a harvest round)")
    p.add_argument("--out", required=True, help="output folder (one sub-folder per scan, and an index)")
    threshold = p.add_mutually_exclusive_group()
    threshold.add_argument("--score-threshold", type=float, default=None,
                           help="report findings scoring at least this")
    threshold.add_argument("--fp-per-volume", type=float, default=None, metavar="N",
                           help="report findings above the checkpoint's operating point at N false positives per "
                                "volume (0.5, 1, 2 or 4; the default is 1 where the checkpoint carries them, else a "
                                "score of 0.3)")
    p.add_argument("--dicom-seg", action="store_true",
                   help="also write findings_seg.dcm for DICOM inputs: a DICOM Segmentation (one segment per "
                        "finding) referring to the source series, for PACS viewers")
    add_device_option(p)
    p.set_defaults(handler=run)


def run(args) -> int:
    from lesion_harvester.detect.findings import detection_request
    from lesion_harvester.detect.run import detect_files
    from lesion_harvester.lpg.checkpoint import load_checkpoint
    from lesion_harvester.paths import DetectLayout

    load_checkpoint(args.checkpoint)  # a missing or foreign checkpoint before any input is read
    device, dist = device_and_ranks(args)
    rank = f"[rank {dist.rank}] " if dist.active else ""

    def load_detector():
        # only once a scan needs it: a rerun whose scans are all written loads no model
        from lesion_harvester.detect.detector import Detector

        detector = Detector.from_checkpoint(args.checkpoint, device=device, min_score=args.score_threshold,
                                            fp_per_volume=args.fp_per_volume)
        print(f"{rank}threshold: {detector.found_with['rule']}")
        return detector

    written = 0
    request = detection_request(args.checkpoint, args.score_threshold, args.fp_per_volume)
    for result in detect_files(args.inputs, None, args.out, progress=not args.quiet, dicom_seg=args.dicom_seg,
                               dist=dist, make_detector=load_detector, request=request):
        if result.runtime_s is None:
            print(f"{rank}{result.volume_id} ({result.input}): {result.note}")
            continue
        written += 1
        note = f" ({result.note})" if result.note else ""
        print(f"{rank}{result.volume_id}: {result.findings} findings in {result.runtime_s:.1f} s -> {result.folder}"
              f"{note}")
    written = sum(dist.gather(written))
    if dist.is_main:
        print(f"wrote {written} scans to {args.out} (index: {DetectLayout(args.out).index_csv})")
    return 0
