"""LPC patch geometry on a finished harvest run: which patches rank V_H^test's proposals best.

    python benchmarks/lpc_patches.py DATA RUN --preset bench --round 1 \\
        --variant 48:64:0:5 --variant 48:64:16:5 [--json OUT.json]

Each ``--variant`` is ``patch_px:pad_px:close_up_pad_px:seed``. For each, an LPC (the preset's
otherwise) is trained on the round's verified proposals (P_M^R, P_M^-, P_H^R) exactly as the
harvest trains it, scores the classifiable proposals of V_H^test, and the label set R + P_H is
evaluated ranked by s_c and by s_g * s_c (recall at 80/90% precision, AP), next to s_g alone.
The run folder is read, never written: its ledger is copied to a temporary folder first.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lesion_harvester.config import load_preset
from lesion_harvester.evaluation.matching import VolumeTruth
from lesion_harvester.evaluation.metrics import evaluate_detections
from lesion_harvester.harvest.rounds import open_run, round_lpc_examples
from lesion_harvester.harvest.steps import classifiable
from lesion_harvester.io.annotations import read_slice_boxes
from lesion_harvester.io.deeplesion import DeepLesionDataset
from lesion_harvester.lpc.api import proposal_patches
from lesion_harvester.lpc.train import predict_lpc, train_lpc
from lesion_harvester.report.harvest_report import with_marks
from lesion_harvester.structures import group_by_volume, marks_to_tracklets

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py, also when loaded by path
import common


@common.guarded
def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__)
    parser.add_argument("data")
    parser.add_argument("run")
    parser.add_argument("--preset", default="bench")
    parser.add_argument("--round", type=int, default=1)
    parser.add_argument("--variant", action="append", required=True, help="patch_px:pad_px:close_up_pad_px:seed")
    args = parser.parse_args(argv)
    preset = load_preset(args.preset)
    with tempfile.TemporaryDirectory() as tmp:
        source = sqlite3.connect(f"file:{Path(args.run) / 'ledger.sqlite'}?mode=ro", uri=True)
        copy = sqlite3.connect(Path(tmp) / "ledger.sqlite")
        source.backup(copy)
        with copy:  # the copy takes this preset's settings
            copy.execute("DELETE FROM meta WHERE key = 'fingerprint'")
        source.close()
        copy.close()
        results = run(args.data, tmp, preset, args.round, args.variant)
    common.report(results, args.json, *(
        f"patch {v['patch_px']} pad {v['pad_px']} close-up {v['close_up_pad_px']} seed {v['seed']}: "
        f"s_c AP {v['s_c']['ap']:.3f}, s_g*s_c R@90P {v['s_g_s_c']['r@90p']:.3f} AP {v['s_g_s_c']['ap']:.3f} "
        f"(s_g alone R@90P {results['s_g']['r@90p']:.3f} AP {results['s_g']['ap']:.3f})"
        for v in results["variants"]))
    return 0


def run(data: str, run_dir: str, preset, round_index: int, variants: list[str]) -> dict:
    h = open_run(data, run_dir, preset, progress=False)
    examples = round_lpc_examples(h, round_index)
    holdout = list(h.inputs.holdout)
    rows = [r for r in h.ledger.proposals(round_index, volumes=holdout) if r.status != "recist"]
    targets = classifiable(rows, preset.lpc)
    gt = read_slice_boxes(h.ledger.get_meta("holdout_file"))
    truth = {k: VolumeTruth.from_slice_boxes(gt[k]) for k in holdout}
    marks = marks_to_tracklets(DeepLesionDataset(data).marks(holdout))
    labels = np.concatenate([examples.vm_labels, np.ones(len(examples.positives))]).astype(np.int64)

    def evaluate(score_of) -> dict:
        extra = group_by_volume((row.volume, row.tracklet.with_objectness(score_of(row))) for row in rows)
        res = evaluate_detections(truth, with_marks(marks, extra))
        return {"r@80p": res.recall_at_precision["0.8"], "r@90p": res.recall_at_precision["0.9"], "ap": res.ap}

    out = {"round": round_index, "positives": int(labels.sum()), "negatives": int((labels == 0).sum()),
           "scored": len(targets), "s_g": evaluate(lambda r: r.objectness), "variants": []}
    for text in variants:
        patch, pad, close_up, seed = text.split(":")
        cfg = dataclasses.replace(preset.lpc, patch_px=int(patch), pad_px=float(pad), close_up_pad_px=float(close_up))
        start = time.time()
        x = torch.cat([proposal_patches(examples.vm_items, h.volume, cfg),
                       proposal_patches(examples.positives, h.volume, cfg)]).float()
        model = train_lpc(x, labels, cfg, seed=int(seed), progress=False)
        target_x = proposal_patches([(r.volume, r.tracklet) for r in targets], h.volume, cfg).float()
        s_c = dict(zip([(r.volume, r.idx) for r in targets], predict_lpc(model, target_x)))
        out["variants"].append({
            "patch_px": int(patch), "pad_px": float(pad), "close_up_pad_px": float(close_up), "seed": int(seed),
            "s_c": evaluate(lambda r, s_c=s_c: float(s_c.get((r.volume, r.idx), 0.0))),
            "s_g_s_c": evaluate(lambda r, s_c=s_c: r.objectness * float(s_c.get((r.volume, r.idx), 0.0))),
            "seconds": round(time.time() - start, 1)})
    return out


if __name__ == "__main__":
    sys.exit(main())
