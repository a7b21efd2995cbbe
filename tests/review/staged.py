"""A harvest run folder staged by hand over the tiny dataset, for the reviewer's tests: two mined
rounds whose proposals, scores and statuses are chosen (no training), shaped as the demo's run was
when a radiologist reviewed it (issue 37): lesions harvested in every round, one lesion harvested in
both, hard negatives, proposals the harvest set aside, and lesions in a holdout volume.

Volume ``a`` (round 1 | round 2; s = s_g * s_c^w, w = 1 in round 1 and 0.5 in round 2):
    lesion X: 1:0 harvested | 2:0 harvested (the same lesion found again)
    lesion Y: 1:1 hard negative | 2:3 set aside ("rejected", below the threshold)
    lesion V:                | 2:1 hard negative
    others:   1:2 rejected   | 2:2, 2:4 rejected
Volume ``b``: 1:0 harvested (lesion W), 1:1 rejected | 2:0 rejected.
Volume ``holdout``: 1:0 harvested | 2:0 hard negative.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from lesion_harvester.harvest.ledger import Ledger
from lesion_harvester.structures import Tracklet

THRESHOLDS = {1: 0.6, 2: 0.5}
EXPONENTS = {1: 1.0, 2: 0.5}


def _t(z0: int, z1: int, box: list[float], s_g: float) -> Tracklet:
    """The same box on slices z0..z1, objectness s_g on the middle one (its key slice)."""
    zs = np.arange(z0, z1 + 1)
    scores = np.full(len(zs), s_g * 0.8)
    scores[len(zs) // 2] = s_g
    return Tracklet(zs, np.tile(np.array(box, dtype=np.float64), (len(zs), 1)), scores)


# per round, per volume: (tracklet, s_c, status)
PROPOSALS = {
    1: {"a": [(_t(3, 5, [20, 20, 34, 34], 0.90), 0.80, "harvested"),
              (_t(8, 9, [60, 60, 72, 72], 0.70), 0.50, "hard_negative"),
              (_t(1, 1, [5, 80, 10, 85], 0.20), 0.10, "rejected")],
        "b": [(_t(10, 12, [30, 30, 46, 46], 0.85), 0.90, "harvested"),
              (_t(2, 2, [70, 10, 80, 20], 0.30), 0.20, "rejected")],
        "holdout": [(_t(4, 6, [10, 60, 24, 74], 0.95), 0.90, "harvested")]},
    2: {"a": [(_t(3, 6, [21, 20, 34, 35], 0.92), 0.81, "harvested"),
              (_t(6, 6, [10, 50, 22, 62], 0.80), 0.25, "hard_negative"),
              (_t(1, 1, [5, 80, 10, 85], 0.25), 0.04, "rejected"),
              (_t(8, 9, [60, 60, 72, 72], 0.60), 0.36, "rejected"),
              (_t(11, 11, [10, 10, 20, 20], 0.55), 0.64, "rejected")],
        "b": [(_t(15, 15, [50, 50, 60, 60], 0.30), 0.01, "rejected")],
        "holdout": [(_t(8, 8, [10, 60, 20, 70], 0.70), 0.30, "hard_negative")]},
}


def staged_run(data: Path, out: Path) -> SimpleNamespace:
    """Write the run folder ``out`` (its ledger only) over the tiny dataset ``data``; returns the run
    folder and the keys of volumes a, b and holdout."""
    splits = json.loads((data / "splits.json").read_text())
    open_keys = [k for k in splits["harvest"] if k not in splits["harvest_test"]]
    keys = {"a": open_keys[0], "b": open_keys[1], "holdout": splits["harvest_test"][0]}
    ledger = Ledger(out / "ledger.sqlite")
    ledger.set_meta("data", str(Path(data).resolve()))
    ledger.set_meta("fully_annotated_file", "")
    ledger.set_volumes(splits["fully_annotated"], splits["harvest"], splits["harvest_test"])
    for r, per_volume in PROPOSALS.items():
        w = EXPONENTS[r]
        with ledger.transaction() as db:
            ledger.add_proposals(db, r, {keys[v]: [t for t, _, _ in rows] for v, rows in per_volume.items()})
            ledger.finish_step(db, r, "scan", {})
            ledger.set_scores(db, r, [(keys[v], i, s_c, t.score * s_c ** w)
                                      for v, rows in per_volume.items() for i, (t, s_c, _) in enumerate(rows)])
            ledger.finish_step(db, r, "classify", {"fusion_exponent": w})
            ledger.set_statuses(db, r, [(keys[v], i, status)
                                        for v, rows in per_volume.items() for i, (_, _, status) in enumerate(rows)])
            ledger.finish_step(db, r, "mine", {"threshold": THRESHOLDS[r]})
    ledger.close()
    return SimpleNamespace(run=out, data=data, **keys)
