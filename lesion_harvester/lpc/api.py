"""``train-lpc`` and ``classify`` outside a harvest: LPC on a proposal file.

``train-lpc`` verifies the proposals (P_M^R and P_M^- against the complete labels of V_M, P_H^R
against the RECIST marks of V_H) and trains one LPC on them. ``classify`` scores proposals with a
trained LPC and writes them with fused scores s_g * s_c (a tracklet pickle, plus a CSV with s_g,
s_c and s).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from lesion_harvester.config import PreprocessConfig, Preset, from_dict, to_dict
from lesion_harvester.errors import DataError
from lesion_harvester.harvest.verify import match_known
from lesion_harvester.io.annotations import Tracklet, read_tracklets, write_tracklets
from lesion_harvester.io.atomic import atomic_write
from lesion_harvester.io.partition import resolve_partition
from lesion_harvester.lpc.patches import extract_patches
from lesion_harvester.lpc.train import load_lpc, predict_lpc, save_lpc, train_lpc
from lesion_harvester.lpg.data import PreparedCache
from lesion_harvester.lpg.train import default_cache_dir


def _patches(source, cache, items: list[tuple[str, Tracklet]], cfg):
    import torch

    by_volume: dict[str, list[int]] = {}
    for i, (key, _) in enumerate(items):
        by_volume.setdefault(key, []).append(i)
    out = [None] * len(items)
    for key, members in by_volume.items():
        patches = extract_patches(cache.get(source, key), [items[i][1] for i in members], cfg)
        for j, i in enumerate(members):
            out[i] = patches[j]
    return torch.stack(out) if items else torch.zeros(0)


def train_lpc_on_proposals(data: str | Path, proposals: str | Path, out: str | Path, preset: Preset,
                           fully_annotated: str | None = None, device: str = "cpu", progress: bool = True) -> dict:
    inputs = resolve_partition(data, fully_annotated, purpose="training the LPC")
    tracklets = read_tracklets(proposals)
    items, labels = [], []
    for key, ts in tracklets.items():
        if key in inputs.fully_annotated:
            hits = match_known(ts, inputs.fully_annotated[key], preset.harvest.verify_iou)
            items += [(key, t) for t in ts]
            labels += hits.tolist()
        elif key in inputs.marks:
            hits = match_known(ts, [m.slice_box() for m in inputs.marks[key]], preset.harvest.verify_iou)
            items += [(key, t) for t, hit in zip(ts, hits) if hit]
            labels += [True] * int(hits.sum())
    if not items:
        raise DataError(proposals, "no proposal in the fully annotated or harvest volumes of this dataset")
    cache = PreparedCache(default_cache_dir(data), preset.preprocess)
    x = _patches(inputs.source, cache, items, preset.lpc)
    y = np.array(labels, dtype=np.int64)
    model = train_lpc(x, y, preset.lpc, device, seed=preset.lpc.seed, progress=progress)
    save_lpc(out, model, preset.lpc, preprocess=to_dict(preset.preprocess))
    return {"positives": int(y.sum()), "negatives": int((y == 0).sum())}


def classify_proposals(data: str | Path, checkpoint: str | Path, proposals: str | Path, out: str | Path,
                       device: str = "cpu") -> dict[str, list[Tracklet]]:
    from lesion_harvester.io.loader import open_volumes

    model, cfg, payload = load_lpc(checkpoint, device)
    if "preprocess" not in payload:
        raise DataError(checkpoint, "this LPC checkpoint does not record its preprocessing; retrain it with train-lpc")
    pre = from_dict(PreprocessConfig, payload["preprocess"], f"{checkpoint} preprocess")
    source = open_volumes(data)
    tracklets = read_tracklets(proposals)
    cache = PreparedCache(default_cache_dir(data) if source.format == "deeplesion" else None, pre)
    scored: dict[str, list[Tracklet]] = {}
    rows = []
    for key, ts in tracklets.items():
        if not ts:
            scored[key] = []
            continue
        s_c = predict_lpc(model, _patches(source, cache, [(key, t) for t in ts], cfg), device=device)
        scored[key] = [Tracklet(t.z_indices, t.boxes_xyxy_px, t.scores * float(c)) for t, c in zip(ts, s_c)]
        rows += [(key, i, t.score, float(c), t.score * float(c)) for i, (t, c) in enumerate(zip(ts, s_c))]
    write_tracklets(out, scored)
    with atomic_write(Path(out).with_suffix(".csv"), "w") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["volume_key", "tracklet", "s_g", "s_c", "s"])
        writer.writerows([(k, i, round(g, 6), round(c, 6), round(s, 6)) for k, i, g, c, s in rows])
    return scored
