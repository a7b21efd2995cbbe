"""How often an LPG training crop shows a lesion its labels do not give there (taught as background).

    python benchmarks/crop_labels.py DATA [--extra-positives FILE] [--preset bench] [--crops 4000]
        [--seed 0] [--json OUT.json]

DATA must hold ``ground_truth/boxes_3d.pkl`` (the synthetic layout). The training labels are those
of ``train-lpg`` on DATA: the RECIST marks and V_M's complete labels, plus ``--extra-positives``
(``harvested.pkl`` for Table III's R+P, ``table3/oracle_positives.pkl`` for R+O). The preset's crop
sampler (``lpg_train``: crop size, background share and volumes) draws ``--crops`` crops; a crop
shows an unlabelled lesion when the centre of a lesion's 3D box lies in the crop on a slice of its
z range and no label box of that slice has its centre within 8 prepared pixels. Reported separately
for background crops (random places, kept off the known lesions' z reach) and crops around an object
(on a labelled slice). Where R+O - R is about nil, this says whether the oracle's labels reach the
crops at all. Nothing is trained; the volumes come from DATA's prepared cache (made if missing).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from lesion_harvester.config import load_preset
from lesion_harvester.dataset.prepared_cache import PreparedCache
from lesion_harvester.errors import DataError
from lesion_harvester.io.annotations import read_boxes_3d
from lesion_harvester.lpg.data import CropSampler
from lesion_harvester.lpg.sources import build_sources
from lesion_harvester.paths import cache_dir_for

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py, also when loaded by path
import common

LABELLED_WITHIN_PX = 8.0  # a label box centred this close to a lesion's centre labels it on that slice


def shows_unlabelled_lesion(lesions_xyxy_px: np.ndarray, labels_xyxy_px: np.ndarray, y0: float, x0: float,
                            side_px: float) -> bool:
    """Whether a crop (``side_px`` square at (y0, x0)) holds the centre of a lesion ((N, 4) boxes on
    its slice) that no label box ((M, 4), the same pixels) is centred on; all in prepared pixels."""
    if not len(lesions_xyxy_px):
        return False
    cx = (lesions_xyxy_px[:, 0] + lesions_xyxy_px[:, 2]) / 2
    cy = (lesions_xyxy_px[:, 1] + lesions_xyxy_px[:, 3]) / 2
    inside = (cx >= x0) & (cx < x0 + side_px) & (cy >= y0) & (cy < y0 + side_px)
    if len(labels_xyxy_px):
        lx = (labels_xyxy_px[:, 0] + labels_xyxy_px[:, 2]) / 2
        ly = (labels_xyxy_px[:, 1] + labels_xyxy_px[:, 3]) / 2
        near = np.hypot(cx[:, None] - lx[None], cy[:, None] - ly[None]).min(axis=1) < LABELLED_WITHIN_PX
        inside &= ~near
    return bool(inside.any())


@common.guarded
def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__)
    parser.add_argument("data")
    parser.add_argument("--extra-positives", default=None)
    parser.add_argument("--preset", default="bench")
    parser.add_argument("--crops", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    data = Path(args.data)
    boxes_path = data / "ground_truth" / "boxes_3d.pkl"
    if not boxes_path.is_file():
        raise DataError(data, "needs ground_truth/boxes_3d.pkl (the synthetic layout)")
    preset = load_preset(args.preset)
    sources = build_sources(data, None, args.extra_positives, None, [], drop_known_positives=bool(args.extra_positives))
    cache = PreparedCache(cache_dir_for(data, None), preset.preprocess)
    prepared = {k: cache.get(sources.source, k) for k in sources.training.volume_keys}
    lesions = read_boxes_3d(boxes_path)
    sampler = CropSampler(sources.training, prepared, preset.lpg.num_slices, preset.preprocess, preset.lpg_train,
                          np.random.default_rng(args.seed))
    counts = {"background": [0, 0], "around_object": [0, 0]}
    for _ in range(args.crops):
        (pv, z, y0, x0, side, _, record), background = sampler.pick()
        on_slice = [b.box_xyxy_px for b in lesions.get(pv.key, []) if b.z_range[0] <= z <= b.z_range[1]]
        there = pv.to_prepared(np.array(on_slice)) if on_slice else np.zeros((0, 4))
        labels = record.positives if record is not None else np.zeros((0, 4))
        labelled = pv.to_prepared(labels) if len(labels) else np.zeros((0, 4))
        entry = counts["background" if background else "around_object"]
        entry[0] += 1
        entry[1] += shows_unlabelled_lesion(there, labelled, y0, x0, side)
    results = {"data": str(data), "extra_positives": args.extra_positives, "preset": args.preset,
               "crops": {kind: {"n": n, "unlabelled_lesion_share": round(hit / max(n, 1), 4)}
                         for kind, (n, hit) in counts.items()}}
    line = ", ".join(f"{kind} crops {v['unlabelled_lesion_share']:.3f} of {v['n']}"
                     for kind, v in results["crops"].items())
    common.report(results, args.json, f"crops showing a lesion unlabelled there: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
