"""A synthetic dataset rewritten in the layout of the real DeepLesion release, to test that path.

    python benchmarks/release_layout.py data/bench_s0 data/bench_s0_release
    lesion-harvester harvest data/bench_s0_release --out RUN --preset bench \\
        --fully-annotated data/bench_s0_release/fully_annotated.pkl --holdout data/bench_s0_release/holdout.pkl

OUT has what a user of the real DeepLesion has, and nothing more: ``Images_png/`` (a symlink to
DATA's), ``DL_info.csv`` with only train (1) and test (3) rows, as many PACS exports (no validation
rows: the validation volumes become training volumes), and the complete labels as separate files
named like the authors' releases: ``fully_annotated.pkl`` (V_M, as Revised-Train744.pkl),
``holdout.pkl`` (V_H^test, as Revised-Train100.pkl) and ``test.pkl`` (V_D^test, as
Revised-Test1071.pkl). No ``splits.json``, no ``ground_truth/``: the harvest takes the real-layout
path (dataset/roles.py). Scores against all of DATA's complete labels still read DATA's files.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from lesion_harvester.errors import DataError
from lesion_harvester.io.annotations import read_slice_boxes, write_slice_boxes
from lesion_harvester.io.deeplesion import read_dl_info, write_dl_info
from lesion_harvester.io.splits import read_splits
from lesion_harvester.storage.atomic import atomic_directory

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py, also when loaded by path
import common

TRAIN, TEST = 1, 3  # DL_info.csv's Train_Val_Test codes
RELEASE_FILES = {"fully_annotated.pkl": "fully_annotated", "holdout.pkl": "harvest_test", "test.pkl": "detection_test"}


def release_layout(data: Path, out: Path) -> dict:
    """Write OUT (see the module docstring); returns what it holds."""
    splits = read_splits(data)
    if splits is None or "harvest" not in splits:
        raise DataError(data, "not a synthetic dataset (no splits.json with a harvest split)")
    complete = read_slice_boxes(data / "ground_truth" / "complete.pkl")
    rows = read_dl_info(data / "DL_info.csv")
    with atomic_directory(out) as tmp:
        (tmp / "Images_png").symlink_to((data / "Images_png").resolve(), target_is_directory=True)
        # the validation split (2) joins the training split, as in an export without validation rows
        write_dl_info(tmp / "DL_info.csv", [dataclasses.replace(row, split=TEST if row.split == TEST else TRAIN)
                                            for row in rows])
        for name, split in RELEASE_FILES.items():
            write_slice_boxes(tmp / name, {k: complete[k] for k in splits.get(split, [])})
    return {"volumes": {name: len(splits.get(split, [])) for name, split in RELEASE_FILES.items()},
            "dl_info_rows": len(rows), "test_rows": sum(1 for row in rows if row.split == TEST)}


@common.guarded
def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__)
    parser.add_argument("data", type=Path, help="a synthetic dataset (lesion-harvester synth)")
    parser.add_argument("out", type=Path, help="the folder to write (must not exist)")
    args = parser.parse_args(argv)
    result = release_layout(args.data, args.out)
    common.report(result, args.json, f"{args.out}: the real-release layout of {args.data} "
                                     f"({result['dl_info_rows']} DL_info rows, no validation rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
