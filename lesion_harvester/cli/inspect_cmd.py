"""``lesion-harvester inspect PATH``: what the loader makes of a file or folder, as JSON."""

from __future__ import annotations

import json


def add_parser(sub) -> None:
    p = sub.add_parser("inspect", help="print a JSON summary of the volumes in a file or folder")
    p.add_argument("path", help="DeepLesion folder, NIfTI file or folder, DICOM file or folder")
    p.add_argument("--split", default=None, help="DeepLesion layout only: a split name (splits.json or train/val/test)")
    p.set_defaults(handler=run)


def run(args) -> int:
    from lesion_harvester.io.loader import open_volumes

    source = open_volumes(args.path, split=args.split)
    summary = {"format": source.format, "volumes": [volume.summary() for volume in source]}
    print(json.dumps(summary, indent=1))
    return 0
