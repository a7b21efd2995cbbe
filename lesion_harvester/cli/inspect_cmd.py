"""``lesion-harvester inspect PATH``: what the loader makes of a file or folder, as JSON."""

from __future__ import annotations

import json

from lesion_harvester.cli.common import add_subcommand


def add_parser(sub) -> None:
    p = add_subcommand(
        sub, "inspect", "print a JSON summary of the volumes in a file or folder",
        "Reads every volume the way the other commands will (reoriented to (z, y, x) in HU) and prints\n"
        "its id, shape, spacing in mm and HU range, so that a wrong rescale or orientation shows early.",
        ["lesion-harvester inspect scan.nii.gz", "lesion-harvester inspect dicom_folder/",
         "lesion-harvester inspect data/bench --split detection_test"])
    p.add_argument("path", help="DeepLesion folder, NIfTI file or folder, DICOM file or folder")
    p.add_argument("--split", default=None, help="DeepLesion layout only: a split name (splits.json or train/val/test)")
    p.set_defaults(handler=run)


def run(args) -> int:
    from lesion_harvester.io.loader import open_volumes

    source = open_volumes(args.path, split=args.split)
    summary = {"format": source.format, "volumes": [volume.summary() for volume in source]}
    print(json.dumps(summary, indent=1))
    return 0
