"""A larger V_M for a synthetic dataset, and the lesion mimics each set of volumes holds.

    python benchmarks/larger_vm.py DATA --extra 30 [--seed 48] [--out VM.pkl] [--json OUT.json]

DATA is a ``lesion-harvester synth`` output. With ``--out`` it writes the complete labels of
splits.json's fully annotated volumes (V_M) plus ``--extra`` harvest volumes drawn with ``--seed``
outside V_H^test, for ``lesion-harvester harvest DATA --fully-annotated VM.pkl``. Without any model
it reports how many of the phantom's bowel loops and normal lymph nodes (synth/anatomy.py: the
structures a detector takes for lesions) reach each volume's slices, per volume, for each split and
for the larger V_M: the paper's premise that V_M's false positives represent V_H's needs V_M to
hold the same mimics, which ten random volumes need not.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lesion_harvester.config import SynthConfig, from_dict
from lesion_harvester.errors import DataError
from lesion_harvester.io.annotations import read_slice_boxes, write_slice_boxes
from lesion_harvester.io.splits import read_splits
from lesion_harvester.io.synth_record import read_generator_record
from lesion_harvester.synth.dataset import painted_structures, scene_of_volume

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py, also when loaded by path
import common

# synth/anatomy.py's names of the structures that mimic lesions, by kind
MIMICS = {"bowel_loop": "bowel_loops", "collapsed_bowel_loop": "bowel_loops", "node": "normal_nodes"}


def draw_extra(splits: dict[str, list[str]], n: int, seed: int) -> list[str]:
    """``n`` harvest volumes outside V_H^test (``harvest_test``), drawn with ``seed``, sorted."""
    pool = sorted(set(splits["harvest"]) - set(splits.get("harvest_test", [])))
    if n > len(pool):
        raise ValueError(f"--extra {n}: only {len(pool)} harvest volumes lie outside V_H^test")
    return sorted(np.random.default_rng(seed).choice(pool, n, replace=False).tolist())


def mimics_of_volume(key: str, seed: int, cfg: SynthConfig) -> dict[str, int]:
    """How many bowel loops and normal nodes the synthetic volume ``key`` shows (those painted on its slices)."""
    counts = dict.fromkeys(sorted(set(MIMICS.values())), 0)
    for name, _ in painted_structures(scene_of_volume(key, seed, cfg)):
        if name in MIMICS:
            counts[MIMICS[name]] += 1
    return counts


def summary(per_volume: dict[str, dict[str, int]], keys: list[str]) -> dict:
    """Mean mimics per volume over ``keys``, in all and by kind, and the share of volumes with a bowel loop."""
    rows = [per_volume[k] for k in keys]

    def mean(values: list) -> float | None:
        return round(float(np.mean(values)), 3) if rows else None

    out = {"volumes": len(rows), "mimics_per_volume": mean([sum(r.values()) for r in rows])}
    for kind in sorted(set(MIMICS.values())):
        out[f"{kind}_per_volume"] = mean([r[kind] for r in rows])
    out["share_with_bowel_loops"] = mean([r["bowel_loops"] > 0 for r in rows])
    return out


@common.guarded
def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__)
    parser.add_argument("data")
    parser.add_argument("--extra", type=int, default=30, help="harvest volumes to add to V_M (default 30)")
    parser.add_argument("--seed", type=int, default=48, help="the draw's seed (default 48)")
    parser.add_argument("--out", type=Path, default=None, help="write the larger V_M's complete labels here (.pkl)")
    args = parser.parse_args(argv)
    data = Path(args.data)
    splits = read_splits(data)
    if splits is None or "harvest" not in splits:
        raise DataError(data, "not a synthetic dataset (no splits.json with a harvest split)")
    settings, seed, record = read_generator_record(data)
    cfg = from_dict(SynthConfig, settings, str(record))
    try:
        extra = draw_extra(splits, args.extra, args.seed)
    except ValueError as e:
        raise DataError(data / "splits.json", str(e)) from None
    larger = list(splits.get("fully_annotated", [])) + extra
    if args.out is not None:
        complete_path = data / "ground_truth" / "complete.pkl"
        complete = read_slice_boxes(complete_path)
        missing = [k for k in larger if k not in complete]
        if missing:
            raise DataError(complete_path, f"no complete labels for {len(missing)} volumes, e.g. {missing[0]}")
        write_slice_boxes(args.out, {k: complete[k] for k in larger})
    keys = sorted({k for split in splits.values() for k in split})
    per_volume = {k: mimics_of_volume(k, seed, cfg) for k in tqdm(keys, desc="volumes", unit="volume")}
    groups = {name: list(volumes) for name, volumes in splits.items()}
    groups[f"fully_annotated_plus_{args.extra}"] = larger
    results = {"data": str(data), "extra": extra, "out": str(args.out) if args.out else None,
               "splits": {name: summary(per_volume, volumes) for name, volumes in groups.items()}}
    line = ", ".join(f"{name} {s['mimics_per_volume']}" for name, s in results["splits"].items() if s["volumes"])
    common.report(results, args.json, f"bowel loops and normal nodes per volume: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
