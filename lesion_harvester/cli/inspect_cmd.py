"""``lesion-harvester inspect PATH``: what the loader makes of a file or folder, as JSON."""

from __future__ import annotations

import json

import numpy as np

from lesion_harvester.cli.common import add_subcommand


def add_parser(sub) -> None:
    p = add_subcommand(
        sub, "inspect", "print a JSON summary of the volumes in a file or folder",
        "Reads every volume the way the other commands will (reoriented to (z, y, x) in HU) and prints\n"
        "its id, shape, spacing in mm and HU range, its orientation (where the input's voxel axes point,\n"
        "as in 3D Slicer: 'LPS' = i toward the patient's left, j posterior, k superior; the slice plane;\n"
        "the tilt from the scanner axes), and for DICOM the series' patient, study and series and the\n"
        "padding read as air, so that a wrong rescale or orientation shows early.",
        ["lesion-harvester inspect scan.nii.gz", "lesion-harvester inspect dicom_folder/",
         "lesion-harvester inspect data/bench --split detection_test"])
    p.add_argument("path", help="DeepLesion folder, NIfTI file or folder, DICOM file or folder")
    p.add_argument("--split", default=None, help="DeepLesion layout only: a split name (splits.json or train/val/test)")
    p.set_defaults(handler=run)


PLANES = {"S": "axial", "I": "axial", "A": "coronal", "P": "coronal", "L": "sagittal", "R": "sagittal"}


def orientation(volume) -> dict:
    """Where the volume's input voxel axes (i, j, k) point in the patient (RAS letters, as 3D Slicer
    and nibabel write them: the direction each axis runs toward), the plane of its slices (k), and its
    largest tilt in degrees from the nearest scanner axis (0 for a volume that is not oblique)."""
    from nibabel.affines import obliquity
    from nibabel.orientations import aff2axcodes

    affine = volume.geometry.input_to_ras
    codes = aff2axcodes(affine)
    return {"input_axes_ijk": "".join(codes), "array_axes_xyz": "LPI", "slice_plane": PLANES[codes[2]],
            "oblique_deg": round(float(np.degrees(np.max(obliquity(affine)))), 3)}


def describe(volume) -> dict:
    """A volume's :meth:`~lesion_harvester.structures.Volume.summary`, its orientation, and a DICOM
    series' identity and padding."""
    summary = {**volume.summary(), "orientation": orientation(volume)}
    dicom = volume.extra.get("dicom")
    if dicom is not None:
        summary["dicom"] = {"patient_id": dicom["patient_id"], "study_instance_uid": dicom["study_uid"],
                            "series_instance_uid": dicom["series_uid"],
                            "series_description": dicom["series_description"],
                            "series_number": dicom["series_number"],
                            "padding_voxels_read_as_air": dicom["padding_voxels"]}
    return summary


def run(args) -> int:
    from lesion_harvester.io.loader import open_volumes

    source = open_volumes(args.path, split=args.split)
    summary = {"format": source.format, "volumes": [describe(volume) for volume in source]}
    print(json.dumps(summary, indent=1))
    return 0
