"""Compare ``lesion-harvester evaluate --metric p3d`` with the authors' unmodified evaluation.py.

The authors' code is not part of this project. Fetch it yourself
(github.com/JimmyCai91/LesionHarvester: evaluation.py and voc_eval_lib.py) and pass its folder:

    python benchmarks/compare_released_eval.py --authors-dir PATH [--seeds 5] [--json OUT.json]

For each seed it writes random detections with distinct scores (jittered copies of the ground
truth over 1-5 slices, duplicates, false positives, whole-image boxes that hit several lesions,
volumes without detections) against Revised-Test1071.pkl, runs both evaluations and reports the
largest AP and FROC differences. The released FROC is inf or NaN where scipy divides by zero; those
entries are listed, not compared.
"""

from __future__ import annotations

import contextlib
import io
import os
import runpy
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

from lesion_harvester.evaluation.api import evaluate_files
from lesion_harvester.io.annotations import read_slice_boxes, write_tracklets
from lesion_harvester.structures import Tracklet

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py, also when loaded by path
import common

ANNOTATIONS = Path(__file__).resolve().parents[2] / "shared" / "data" / "deeplesion_annotation"


def random_detections(gt, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    used: set[float] = set()

    def score() -> float:
        s = float(rng.uniform(0.01, 1.0))
        while s in used:
            s = float(rng.uniform(0.01, 1.0))
        used.add(s)
        return s

    detections = {}
    for key, boxes in gt.items():
        tracklets = []
        for b in boxes:
            if rng.random() < 0.6:
                n = int(rng.integers(1, 6))
                z0 = max(0, b.z_index - int(rng.integers(0, n)))
                bx = np.array(b.box_xyxy_px) + rng.normal(0, rng.choice([1, 4, 10]), (n, 4))
                bx[:, 2:] = np.maximum(bx[:, 2:], bx[:, :2] + 1)
                tracklets.append(Tracklet(np.arange(z0, z0 + n), bx, np.array([score() for _ in range(n)])))
                if rng.random() < 0.15:  # a duplicate
                    dup = np.array(b.box_xyxy_px) + np.clip(rng.normal(0, 2, (n, 4)), -3, 3)
                    tracklets.append(Tracklet(np.arange(z0, z0 + n), dup, np.array([score() for _ in range(n)])))
        for _ in range(int(rng.integers(0, 8))):  # false positives
            z = int(rng.integers(0, 30))
            x, y = rng.uniform(50, 400, 2)
            w, h = rng.uniform(10, 60, 2)
            tracklets.append(Tracklet(np.array([z, z + 1]), np.array([[x, y, x + w, y + h]] * 2),
                                      np.array([score(), score()])))
        if boxes and rng.random() < 0.1:  # one box that may hit several lesions of a slice
            tracklets.append(Tracklet(np.array([boxes[0].z_index]), np.array([[0, 0, 511, 511]]), np.array([score()])))
        detections[key] = [] if rng.random() < 0.05 else tracklets
    return detections


@common.guarded
def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__)
    parser.add_argument("--authors-dir", required=True,
                        help="folder with the authors' evaluation.py and voc_eval_lib.py")
    parser.add_argument("--annotations", default=str(ANNOTATIONS))
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args(argv)
    gt_path = Path(args.annotations) / "Revised-Test1071.pkl"
    gt = read_slice_boxes(gt_path)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        for name in ("evaluation.py", "voc_eval_lib.py"):
            shutil.copy(Path(args.authors_dir) / name, work / name)
        (work / "annotation").mkdir()
        (work / "detection").mkdir()
        shutil.copy(gt_path, work / "annotation" / "Revised-Test1071.pkl")
        for seed in range(args.seeds):
            dets = work / "detection" / "detectedTest1071.pkl"
            write_tracklets(dets, random_detections(gt, seed))
            cwd = os.getcwd()
            os.chdir(work)
            sys.path.insert(0, str(work))
            try:
                with warnings.catch_warnings(), np.errstate(all="ignore"):
                    warnings.simplefilter("ignore")
                    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                        released = runpy.run_path("evaluation.py", run_name="__main__")
            finally:
                os.chdir(cwd)
                sys.path.remove(str(work))
            ours = evaluate_files(gt_path, dets)
            theirs_froc = np.array(released["res"], dtype=float)
            ours_froc = np.array(list(ours.froc.values()))
            finite = np.isfinite(theirs_froc)
            rows.append({
                "seed": seed,
                "n_detections": ours.n_detections,
                "ap_released": float(released["ap"]),
                "ap_ours": ours.ap,
                "ap_abs_diff": abs(float(released["ap"]) - ours.ap),
                "froc_max_abs_diff": (float(np.max(np.abs(ours_froc[finite] - theirs_froc[finite])))
                                      if finite.any() else 0.0),
                "froc_nonfinite_in_released": [r for r, f in zip(ours.froc, finite) if not f],
            })
    summary = {
        "runs": rows,
        "max_ap_abs_diff": max(r["ap_abs_diff"] for r in rows),
        "max_froc_abs_diff": max(r["froc_max_abs_diff"] for r in rows),
    }
    common.report(summary, args.json,
                  f"released vs ours over {len(rows)} random detection sets on Revised-Test1071: max |dAP| "
                  f"{summary['max_ap_abs_diff']:.2e}, max |dFROC| {summary['max_froc_abs_diff']:.2e} (finite entries)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
