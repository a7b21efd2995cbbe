"""The LPC on proposals: patches of many proposals, K-fold training, and ``classify``.

These are the functions the harvest and the ``train-lpc`` / ``classify`` commands share:

- :func:`proposal_patches`: the LPC input of many (volume, tracklet) pairs, volume by volume;
- :func:`train_lpc_folds`: one LPC per fold of V_M, each trained without its fold's V_M
  proposals, so that every V_M proposal can be scored by a model that never saw its volume
  (``train-lpc`` trains one model on everything: a single fold that holds nothing out);
- :func:`classify_proposals`: scores a proposal file with a trained LPC and writes it with fused
  scores s = s_g * s_c (a tracklet pickle, plus a CSV with s_g, s_c and s).
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from lesion_harvester.config import LPCConfig, PreprocessConfig, from_dict, to_dict
from lesion_harvester.dataset.prepared_cache import PreparedCache
from lesion_harvester.device import resolve_device
from lesion_harvester.errors import ConfigError, DataError
from lesion_harvester.io.annotations import read_tracklets, write_tracklets
from lesion_harvester.io.loader import open_volumes
from lesion_harvester.lpc.patches import extract_patches
from lesion_harvester.lpc.train import load_lpc, matched_weights, predict_lpc, pretrain_lpc, save_lpc, train_lpc
from lesion_harvester.lpg.data import in_workers
from lesion_harvester.paths import cache_dir_for
from lesion_harvester.preprocessing import PreparedVolume
from lesion_harvester.storage.atomic import atomic_write
from lesion_harvester.structures import Tracklet, group_by_volume

PreparedVolumes = Callable[[str], PreparedVolume]  # volume key -> its prepared volume (e.g. from a cache)


class _VolumePatches(torch.utils.data.Dataset):
    """Item v: (the item indices of volume v, their float16 patches), for a loader worker."""

    def __init__(self, members: list[tuple[str, list[int]]], items: Sequence[tuple[str, Tracklet]],
                 volumes: PreparedVolumes, cfg: LPCConfig):
        self.members, self.items, self.volumes, self.cfg = members, items, volumes, cfg

    def __len__(self) -> int:
        return len(self.members)

    def __getitem__(self, v: int) -> tuple[list[int], torch.Tensor]:
        key, idx = self.members[v]
        return idx, extract_patches(self.volumes(key), [self.items[i][1] for i in idx], self.cfg).half()


def proposal_patches(items: Sequence[tuple[str, Tracklet]], volumes: PreparedVolumes, cfg: LPCConfig,
                     progress: bool = False) -> torch.Tensor:
    """The LPC input of each (volume key, tracklet), in the order given.

    Returns float16 (N, V, C, *[P] * D), the variant's views (:func:`~lesion_harvester.lpc.patches.extract_patches`);
    an empty tensor for no items.
    Stored in float16 to halve the memory of many patches; the models read them as float32.
    With ``cfg.loader_workers`` > 0, that many processes read the volumes and cut their patches.
    """
    members = group_by_volume((key, i) for i, (key, _) in enumerate(items))
    parts: list[torch.Tensor | None] = [None] * len(items)
    per_volume = _VolumePatches(list(members.items()), items, volumes, cfg)
    if cfg.loader_workers > 0 and len(per_volume) > 1:
        per_volume = in_workers(per_volume, cfg.loader_workers)
    for idx, patches in tqdm(per_volume, total=len(members), desc="LPC patches", unit="vol", disable=not progress,
                             leave=False):
        for j, i in enumerate(idx):
            parts[i] = patches[j]
    if not items:
        return torch.zeros(0)
    return torch.stack(parts)  # type: ignore[arg-type]


@dataclass
class LPCExamples:
    """Labelled proposals to train the LPC on.

    Attributes:
        vm_items: (volume key, tracklet) of the V_M proposals, P_M^R and P_M^-.
        vm_labels: (N_M,) int64, 1 for P_M^R (a complete label covers it), 0 for P_M^-.
        positives: (volume key, tracklet) of V_H proposals covering a RECIST mark (P_H^R), always
            positives and in every fold's training set.
        unlabelled: (volume key, tracklet) of V_H proposals that ``lpc.pretrain`` learns the s_g of
            before any fold trains (never a V_M volume, so no fold's held-out volume is seen).
        negatives: (volume key, tracklet) of V_H proposals taken as negatives (``lpc.vh_negatives_per_volume``),
            in every fold's training set like ``positives`` (never a V_M volume).
    """

    vm_items: list[tuple[str, Tracklet]]
    vm_labels: np.ndarray
    positives: list[tuple[str, Tracklet]]
    unlabelled: list[tuple[str, Tracklet]] = field(default_factory=list)
    negatives: list[tuple[str, Tracklet]] = field(default_factory=list)

    def counts(self) -> dict:
        return {"positives": int(self.vm_labels.sum()) + len(self.positives),
                "negatives": int((self.vm_labels == 0).sum()) + len(self.negatives)}


def size_and_score(t: Tracklet) -> tuple[float, float]:
    """What an LPC example is matched on: the long side of its key-slice box (px) and its s_g."""
    x1, y1, x2, y2 = t.boxes_xyxy_px[t.key_index]
    return float(max(x2 - x1, y2 - y1)), t.score


def train_lpc_folds(examples: LPCExamples, folds: list[list[str]], volumes: PreparedVolumes, cfg: LPCConfig,
                    preprocess: PreprocessConfig, paths: list[Path], device: str = "cpu", seed: int = 0,
                    skip_existing: bool = False, progress: bool = True, desc: str = "LPC") -> None:
    """Train one LPC per fold and save fold f to ``paths[f]``.

    Fold f trains on the V_M proposals outside ``folds[f]`` (all of them when there is one fold)
    and on every positive and V_H negative, with seed ``seed + f``. ``skip_existing`` keeps a fold whose file exists
    (resuming). Each checkpoint records its held-out volumes and the preprocessing, so that
    ``classify`` can use it.
    """
    if len(paths) != len(folds):
        raise ValueError(f"{len(folds)} folds but {len(paths)} output paths")
    if skip_existing and all(path.is_file() for path in paths):
        return
    vm_volumes = {key for key, _ in examples.vm_items}
    if any(key in vm_volumes for key, _ in examples.negatives):  # a fold would train on its held-out volume
        raise ValueError("the LPC's V_H negatives include proposals of a V_M volume")
    init = None
    if cfg.pretrain == "lpg_scores":
        init = _pretrained(examples, volumes, cfg, device, seed, progress, desc)
    vm_x = proposal_patches(examples.vm_items, volumes, cfg, progress)
    positives_x = proposal_patches(examples.positives, volumes, cfg, progress)
    negatives_x = proposal_patches(examples.negatives, volumes, cfg, progress) if examples.negatives else None
    for f, (fold, path) in enumerate(zip(folds, paths)):
        if skip_existing and path.is_file():
            continue
        held = set(fold)
        keep = [i for i, (key, _) in enumerate(examples.vm_items) if key not in held or len(folds) == 1]
        x = torch.cat([vm_x[keep], positives_x] + ([negatives_x] if negatives_x is not None else [])).float()
        y = np.concatenate([examples.vm_labels[keep], np.ones(len(examples.positives), dtype=np.int64),
                            np.zeros(len(examples.negatives), dtype=np.int64)])
        weights = None
        if cfg.negatives == "matched":
            items = [examples.vm_items[i] for i in keep] + list(examples.positives) + list(examples.negatives)
            features = np.array([size_and_score(t) for _, t in items]).reshape(-1, 2)
            weights = matched_weights(features[y == 1], features[y == 0])
        model = train_lpc(x, y, cfg, device, seed=seed + f, progress=progress,
                          desc=f"{desc} fold {f + 1}/{len(folds)}" if len(folds) > 1 else desc,
                          negative_weights=weights, init=init)
        save_lpc(path, model, cfg, held_out=sorted(held), preprocess=to_dict(preprocess),
                 pretrained_on=list(dict.fromkeys(k for k, _ in examples.unlabelled)) if init is not None else [])


def _pretrained(examples: LPCExamples, volumes: PreparedVolumes, cfg: LPCConfig, device: str, seed: int,
                progress: bool, desc: str) -> dict[str, torch.Tensor]:
    """The weights every fold starts from under ``lpc.pretrain: lpg_scores``."""
    if not examples.unlabelled:
        raise ConfigError("lpc.pretrain: lpg_scores needs proposals in V_H volumes to learn from, and there are "
                          "none above lpc.min_objectness (set lpc.pretrain: none)")
    vm_volumes = {key for key, _ in examples.vm_items}
    if any(key in vm_volumes for key, _ in examples.unlabelled):  # a fold would have seen its held-out volume
        raise ValueError("LPC pretraining was given proposals of a V_M volume")
    x = proposal_patches(examples.unlabelled, volumes, cfg, progress)
    return pretrain_lpc(x, np.array([t.score for _, t in examples.unlabelled]), cfg, device, seed=seed + 1000,
                        progress=progress, desc=f"{desc} pretraining")


def classify_proposals(data: str | Path, checkpoint: str | Path, proposals: str | Path, out: str | Path,
                       device: str = "auto", cache_dir: str | Path | None = None) -> dict[str, list[Tracklet]]:
    """Score every proposal of ``proposals`` with the LPC ``checkpoint``; write and return them with
    fused scores (each 2D score times s_c, so a tracklet's objectness becomes s = s_g * s_c).
    ``cache_dir``: see :func:`lesion_harvester.paths.cache_dir_for`."""
    device = resolve_device(device)
    model, cfg, payload = load_lpc(checkpoint, device)
    if "preprocess" not in payload:
        raise DataError(checkpoint, "this LPC checkpoint does not record its preprocessing; retrain it with train-lpc")
    pre = from_dict(PreprocessConfig, payload["preprocess"], f"{checkpoint} preprocess")
    source = open_volumes(data)
    tracklets = read_tracklets(proposals)
    # DeepLesion folders are cached by default, single scans only where asked
    cache = PreparedCache(cache_dir_for(data, cache_dir) if source.format == "deeplesion" or cache_dir else None, pre)
    scored: dict[str, list[Tracklet]] = {}
    rows = []
    for key, ts in tracklets.items():
        if not ts:
            scored[key] = []
            continue
        patches = proposal_patches([(key, t) for t in ts], lambda k: cache.get(source, k), cfg)
        s_c = predict_lpc(model, patches.float(), device=device)
        scored[key] = [t.scaled(float(c)) for t, c in zip(ts, s_c)]
        rows += [(key, i, t.score, float(c), t.score * float(c)) for i, (t, c) in enumerate(zip(ts, s_c))]
    write_tracklets(out, scored)
    with atomic_write(Path(out).with_suffix(".csv"), "w") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["volume_key", "tracklet", "s_g", "s_c", "s"])
        writer.writerows([(k, i, round(g, 6), round(c, 6), round(s, 6)) for k, i, g, c, s in rows])
    return scored
