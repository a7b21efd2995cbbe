"""detect on synthetic scans stored as NIfTI with flipped axes and 0.7 x 0.7 x 2.5 mm voxels: world error, runtime.

    python benchmarks/detect_world.py CKPT [--preset bench] [--volumes 6] [--seed 500] [--device cpu]
        [--pixel-mm 0.7] [--interval-mm 2.5] [--min-score 0.3]

Each volume comes from the synthetic generator with its pixel size and slice interval fixed (by
default 0.7 mm and 2.5 mm; the preset sets the image size), and is written as a NIfTI file in RAS+ order,
every axis flipped against the detector's array frame, with an origin off zero. ``detect``'s Python
API reads it back (load_volume), finds lesions, and each lesion's world centre (the centre of its
complete 3D box, mapped through the file's affine by this script) is compared with the centre of
the best-scoring finding that hits it as the P3D evaluation counts a hit (a box on the lesion's key
slice with VOC IoU >= 0.5). Prints the distances (median, 90th percentile, share within 2 mm),
the lesions found, and the seconds per scan.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from lesion_harvester import Detector, findings_document, load_volume
from lesion_harvester.config import load_preset
from lesion_harvester.geometry.boxes import iou_voc
from lesion_harvester.synth.dataset import generate_volume

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py, also when loaded by path
import common

ORIGIN_RAS = np.array([123.4, -56.7, 89.0])


def _write_flipped(hu_zyx: np.ndarray, path: Path, pixel_mm: float, interval_mm: float) -> np.ndarray:
    """Array (z, y, x) -> a RAS+ NIfTI (i toward Right, j Anterior, k Superior: all three axes reversed
    against x left, y posterior, z inferior); returns its affine."""
    data_ijk = np.ascontiguousarray(np.transpose(hu_zyx, (2, 1, 0))[::-1, ::-1, ::-1])
    affine = np.diag([pixel_mm, pixel_mm, interval_mm, 1.0])
    affine[:3, 3] = ORIGIN_RAS
    nib.save(nib.Nifti1Image(data_ijk, affine), path)
    return nib.load(path).affine


@common.guarded
def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__)
    parser.add_argument("checkpoint")
    parser.add_argument("--preset", default="bench", help="synthetic volumes of this preset (image size)")
    parser.add_argument("--volumes", type=int, default=6)
    parser.add_argument("--seed", type=int, default=500)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--min-score", type=float, default=0.3)
    parser.add_argument("--pixel-mm", type=float, default=0.7)
    parser.add_argument("--interval-mm", type=float, default=2.5)
    args = parser.parse_args(argv)
    synth = dataclasses.replace(load_preset(args.preset).synth, pixel_mm=(args.pixel_mm, args.pixel_mm),
                                slice_intervals_mm=(args.interval_mm,), slice_interval_weights=(1.0,))
    detector = Detector.from_checkpoint(args.checkpoint, device=args.device, min_score=args.min_score)
    distances, per_axis, runtimes, lesions, found, findings_per_scan, slices = [], [], [], 0, 0, [], []
    same_extent = []  # per hit: does the finding cover exactly the lesion's slices?
    end_offsets = []  # per hit: the finding's first and last slice minus the lesion's (slices)
    with tempfile.TemporaryDirectory() as tmp:
        for index in range(args.volumes):
            hu_zyx, record = generate_volume(index, args.seed, synth, "detection_test")
            path = Path(tmp) / f"v{index}.nii.gz"
            affine = _write_flipped(hu_zyx, path, args.pixel_mm, args.interval_mm)
            start = time.perf_counter()
            findings = detector(load_volume(path))
            runtimes.append(time.perf_counter() - start)
            volume = findings.volume
            slices.append(volume.num_slices)
            records = findings_document(findings, "RAS")["findings"]
            findings_per_scan.append(len(records))
            shape_ijk = np.array(volume.geometry.input_shape_ijk)
            for lesion in record.lesions:
                lesions += 1
                x1, y1, x2, y2 = lesion.box3d_xyxy_px
                centre_xyz = np.array([(x1 + x2) / 2, (y1 + y2) / 2, sum(lesion.z_range) / 2])
                # where the lesion's centre voxel lies in the file, and so in the world (independent of
                # the package's geometry: the flips are the ones this script wrote)
                centre_ijk = shape_ijk - 1 - centre_xyz
                truth_world = affine[:3, :3] @ centre_ijk + affine[:3, 3]
                # a hit as in the P3D evaluation: a box on the lesion's key slice with VOC IoU >= 0.5
                hits = [r for r in records for s in r["slices"]
                        if s["z_index"] == lesion.key_z and iou_voc(lesion.box_xyxy_px, [s["box_xyxy_px"]])[0] >= 0.5]
                if not hits:
                    continue
                found += 1
                best = max(hits, key=lambda r: r["score"])
                error = np.array(best["centre_world_mm"]) - truth_world
                distances.append(float(np.linalg.norm(error)))
                same_extent.append(tuple(best["z_range"]) == tuple(lesion.z_range))
                end_offsets.append([best["z_range"][0] - lesion.z_range[0], best["z_range"][1] - lesion.z_range[1]])
                per_axis.append(np.abs(error))
    d = np.array(distances)
    axis = np.array(per_axis) if per_axis else np.zeros((0, 3))
    same = np.array(same_extent, dtype=bool)
    results = {
        "checkpoint": args.checkpoint, "preset": args.preset, "volumes": args.volumes, "seed": args.seed,
        "voxel_mm": [args.pixel_mm, args.pixel_mm, args.interval_mm], "min_score": args.min_score,
        "lesions": lesions, "found": found,
        "world_error_mm": {"median": float(np.median(d)) if len(d) else None,
                           "p90": float(np.percentile(d, 90)) if len(d) else None,
                           "within_2mm": float(np.mean(d <= 2.0)) if len(d) else None,
                           "median_abs_xyz": np.median(axis, axis=0).tolist() if len(axis) else None,
                           # the geometry's share of the error: hits whose slice range is the lesion's
                           # have only the in-plane box error left; the others miss or add end slices
                           "hits_with_the_lesions_slice_range": int(same.sum()),
                           "max_when_slice_range_matches": float(d[same].max()) if same.any() else None,
                           "median_when_slice_range_differs": float(np.median(d[~same])) if (~same).any() else None},
        "slice_range_end_offsets": end_offsets,
        "seconds_per_scan": {"mean": float(np.mean(runtimes)), "max": float(np.max(runtimes))},
        "findings_per_scan": findings_per_scan,
        "slices_per_scan": slices,
    }
    error = results["world_error_mm"]
    line = (f"detect on {args.volumes} flipped {args.pixel_mm}x{args.pixel_mm}x{args.interval_mm} mm NIfTI scans "
            f"({args.preset}): {found}/{lesions} lesions hit (P3D); world centre error median "
            f"{error['median'] if error['median'] is not None else float('nan'):.2f} mm, "
            f"{100 * (error['within_2mm'] or 0):.0f}% within 2 mm; "
            f"{results['seconds_per_scan']['mean']:.1f} s per scan ({args.device})")
    common.report(results, args.json, line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
