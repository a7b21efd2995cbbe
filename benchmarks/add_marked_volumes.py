"""Make a synthetic dataset with more RECIST-marked training volumes: BASE plus EXTRA's harvest volumes.

Measures how the LPG scales with the number of marks while everything it is scored on stays the
same: OUT has BASE's V_M, validation, ``detection_test`` and ``harvest_test`` unchanged, and its
harvest split (V_H, marks only) grows by the harvest volumes of EXTRA, another ``synth`` output
(same preset, another seed), whose patients are renumbered so that no key collides. Images,
``ground_truth/`` and prepared-volume caches are symlinked, so OUT costs almost no disk.

    lesion-harvester synth data/extra --preset EXTRA.yaml --seed 5   # e.g. bench with 380 harvest volumes
    python benchmarks/add_marked_volumes.py data/bench_s0 data/extra data/bench_more
    lesion-harvester train-lpg data/bench_more --out CKPT --preset bench
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
from pathlib import Path

from lesion_harvester.errors import DataError
from lesion_harvester.io.deeplesion import DeepLesionDataset, read_dl_info, write_dl_info
from lesion_harvester.io.splits import read_splits
from lesion_harvester.paths import cache_dir_for

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py, also when loaded by path
import common


def _renumber(name: str, offset: int) -> str:
    """``PPPPPP_...`` with the patient index raised by ``offset``."""
    return f"{int(name[:6]) + offset:06d}{name[6:]}"


def add_marked_volumes(base: Path, extra: Path, out: Path, max_volumes: int | None = None) -> dict:
    """Write OUT (see the module docstring); returns counts of what was added."""
    if out.exists():
        raise DataError(out, "exists already; give a new folder")
    base_splits, extra_splits = read_splits(base), read_splits(extra)
    for root, splits in ((base, base_splits), (extra, extra_splits)):
        if splits is None or "harvest" not in splits:
            raise DataError(root / "splits.json", "missing or without a 'harvest' split (not a synth output)")
    base_rows = read_dl_info(base / "DL_info.csv")
    extra_data = DeepLesionDataset(extra)
    # an offset above every BASE patient index keeps EXTRA's renumbered keys apart from BASE's
    offset = 10 ** len(str(max(r.patient_index for r in base_rows)))
    keys = extra_splits["harvest"][:max_volumes]
    if max(int(k[:6]) for k in keys) + offset >= 10**6:
        raise DataError(extra, "patient indices too large to renumber into 6 digits")

    # built beside OUT and renamed at the end, so a failure never leaves a half-made OUT
    partial = out.parent / f".{out.name}.partial"
    if partial.exists():
        shutil.rmtree(partial)
    images = partial / "Images_png"
    images.mkdir(parents=True)
    for folder in (base / "Images_png").iterdir():
        os.symlink(folder.resolve(), images / folder.name)
    os.symlink((base / "ground_truth").resolve(), partial / "ground_truth")
    rows, new_keys = list(base_rows), []
    for key in keys:
        sub = extra_data.sub_volumes[key]
        folder = _renumber(sub.folder.name, offset)
        if not (images / folder).exists():
            os.symlink(sub.folder.resolve(), images / folder)
        for row in sub.rows:
            rows.append(dataclasses.replace(row, patient_index=row.patient_index + offset,
                                            file_name=f"{folder}_{row.key_slice_index:03d}.png"))
        new_keys.append(_renumber(key, offset))
    write_dl_info(partial / "DL_info.csv", rows)
    splits = dict(base_splits, harvest=base_splits["harvest"] + new_keys)
    (partial / "splits.json").write_text(json.dumps(splits, indent=1))

    # prepared volumes of either dataset stay valid under the new names (same preset fingerprints)
    for root, rename in ((base, False), (extra, True)):
        if not cache_dir_for(root).is_dir():
            continue
        for fingerprint in cache_dir_for(root).iterdir():
            target = cache_dir_for(partial) / fingerprint.name
            target.mkdir(parents=True, exist_ok=True)
            for f in fingerprint.iterdir():
                if not f.name.startswith("."):  # skip temporary files of an interrupted write
                    os.symlink(f.resolve(), target / (_renumber(f.name, offset) if rename else f.name))
    partial.rename(out)
    return {"harvest_volumes": len(splits["harvest"]), "added_volumes": len(new_keys),
            "marks": len(rows), "added_marks": len(rows) - len(base_rows)}


@common.guarded
def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__)
    parser.add_argument("base", type=Path, help="synthetic dataset whose splits are kept")
    parser.add_argument("extra", type=Path, help="synthetic dataset whose harvest volumes are added")
    parser.add_argument("out", type=Path, help="new folder")
    parser.add_argument("--max-volumes", type=int, default=None, help="add at most this many (default all)")
    args = parser.parse_args(argv)
    counts = add_marked_volumes(args.base, args.extra, args.out, args.max_volumes)
    common.report(counts, args.json,
                  f"{args.out}: {counts['harvest_volumes']} harvest volumes ({counts['added_volumes']} added), "
                  f"{counts['marks']} marks ({counts['added_marks']} added)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
