"""Train the LPC on verified proposals and score proposals with it.

Examples are proposals with a label: positives P_M^R and P_H^R (proposals matching complete labels
in V_M or RECIST marks in V_H), negatives P_M^- (the other proposals of V_M). Batches are class
balanced (half positives, half negatives, drawn with replacement).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from lesion_harvester.config import LPCConfig, from_dict, to_dict
from lesion_harvester.errors import DataError
from lesion_harvester.io.torch_files import check_format, load_state, load_weights_only, written_with
from lesion_harvester.lpc.model import LesionProposalClassifier
from lesion_harvester.storage.atomic import atomic_write

FORMAT = "lesion-harvester-lpc/1"


def _augment(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Random flips of each spatial axis of patches (N, V, C, *spatial) and a small contrast change
    (labels do not move)."""
    for d in range(3, x.dim()):
        if rng.random() < 0.5:
            x = x.flip(d)
    scale = torch.from_numpy(rng.uniform(0.9, 1.1, size=(x.shape[0],) + (1,) * (x.dim() - 1)).astype(np.float32))
    return ((x - 0.5) * scale + 0.5).clamp(0, 1)


def matched_weights(positives: np.ndarray, negatives: np.ndarray, bins: int = 4, floor: float = 0.01) -> np.ndarray:
    """Sampling weights (M,) for negatives whose features ``negatives`` (M, F) make their weighted
    distribution that of ``positives`` (P, F): each feature cut at the positives' quantiles into
    ``bins`` bins, each negative weighted by its joint bin's share among the positives over its share
    among the negatives (``floor`` keeps bins the positives lack in play, rarely). Sums to 1."""
    positives, negatives = np.asarray(positives, dtype=np.float64), np.asarray(negatives, dtype=np.float64)
    if len(positives) == 0 or len(negatives) == 0:
        return np.full(len(negatives), 1.0 / max(len(negatives), 1))

    def cells(x: np.ndarray) -> np.ndarray:
        index = np.zeros(len(x), dtype=np.int64)
        for f in range(positives.shape[1]):
            edges = np.quantile(positives[:, f], np.linspace(0, 1, bins + 1)[1:-1])
            index = index * bins + np.searchsorted(edges, x[:, f], side="right")
        return index

    n_cells = bins ** positives.shape[1]
    pos_share = np.bincount(cells(positives), minlength=n_cells) / len(positives)
    neg_cells = cells(negatives)
    neg_share = np.bincount(neg_cells, minlength=n_cells) / len(negatives)
    weights = (pos_share[neg_cells] + floor) / neg_share[neg_cells]
    return weights / weights.sum()


def _fit(model: LesionProposalClassifier, cfg: LPCConfig, total: int,
         batch: Callable[[], tuple[torch.Tensor, torch.Tensor]], device: str, progress: bool, desc: str) -> None:
    """``total`` AdamW steps of a binary cross-entropy on ``batch()``'s (patches, targets), with a
    cosine learning rate and a progress bar: the loop of both pretraining and training."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: 0.5 * (1 + math.cos(math.pi * min(i / total, 1))))
    model.train()
    bar = tqdm(range(total), desc=desc, unit="it", disable=not progress, dynamic_ncols=True)
    for _ in bar:
        x, y = batch()
        loss = F.binary_cross_entropy_with_logits(model(x.to(device)), y.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        bar.set_postfix(loss=f"{float(loss.detach()):.3f}")


def pretrain_lpc(patches: torch.Tensor, objectness: np.ndarray, cfg: LPCConfig, device: str = "cpu", seed: int = 0,
                 progress: bool = True, desc: str = "LPC pretraining") -> dict[str, torch.Tensor]:
    """Teach a fresh LPC the LPG's judgement on this domain's unlabelled proposals, before it sees a label.

    patches: (N, ...) from extract_patches, of proposals no label decides (V_H's, none of V_M's);
    objectness: (N,) their s_g, the soft target of a binary cross-entropy. ``cfg.pretrain_epochs``
    passes over them in random batches. Returns the model's state dict, the start of each fold's
    training (:func:`train_lpc` ``init``).
    """
    targets = torch.as_tensor(np.clip(np.asarray(objectness, dtype=np.float32), 0, 1))
    if len(targets) != len(patches) or len(targets) == 0:
        raise ValueError(f"pretraining needs one s_g per patch and some patches: {len(targets)} and {len(patches)}")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = LesionProposalClassifier(cfg).to(device)

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        idx = rng.choice(len(targets), min(cfg.batch_size, len(targets)), replace=False)
        return _augment(patches[idx].float(), rng), targets[idx]

    _fit(model, cfg, cfg.pretrain_epochs * max(1, math.ceil(len(targets) / cfg.batch_size)), batch, device,
         progress, desc)
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def train_lpc(patches: torch.Tensor, labels: np.ndarray, cfg: LPCConfig, device: str = "cpu", seed: int = 0,
              progress: bool = True, desc: str = "LPC", negative_weights: np.ndarray | None = None,
              init: dict[str, torch.Tensor] | None = None) -> LesionProposalClassifier:
    """Train one LPC. patches: (N, ...) from extract_patches; labels: (N,) 0/1; negative_weights:
    (number of negatives,) the probability of drawing each negative, in order (default: uniform);
    init: the weights it starts from (:func:`pretrain_lpc`; default: random)."""
    labels = np.asarray(labels, dtype=np.int64)
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    if len(pos) == 0 or len(neg) == 0:
        raise DataError(None, f"cannot train the LPC: {len(pos)} positive and {len(neg)} negative proposals "
                              "(verification needs proposals that match marks and others that do not)")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = LesionProposalClassifier(cfg)
    if init is not None:
        model.load_state_dict(init)
    model = model.to(device)
    half = max(1, cfg.batch_size // 2)

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.concatenate([rng.choice(pos, half), rng.choice(neg, half, p=negative_weights)])
        return _augment(patches[idx], rng), torch.from_numpy(labels[idx].astype(np.float32))

    iters_per_epoch = max(1, math.ceil(2 * max(len(pos), len(neg)) / cfg.batch_size / 2))
    _fit(model, cfg, cfg.epochs * iters_per_epoch, batch, device, progress, desc)
    return model.eval()


@torch.no_grad()
def predict_lpc(model: LesionProposalClassifier, patches: torch.Tensor, batch_size: int = 64,
                device: str = "cpu") -> np.ndarray:
    """s_c: the LPC's lesion probability of each patch, (N,)."""
    model.eval()
    out = []
    for start in range(0, len(patches), batch_size):
        out.append(torch.sigmoid(model(patches[start:start + batch_size].to(device))).cpu())
    return torch.cat(out).numpy() if out else np.zeros(0)


def save_lpc(path: str | Path, model: LesionProposalClassifier, cfg: LPCConfig, **extra) -> None:
    with atomic_write(path) as handle:
        torch.save({"format": FORMAT, "written_with": written_with(), "config": to_dict(cfg),
                    "state_dict": model.state_dict(), **extra}, handle)


def load_lpc(path: str | Path, device: str = "cpu") -> tuple[LesionProposalClassifier, LPCConfig, dict]:
    payload = check_format(load_weights_only(path, "LPC checkpoint"), path, FORMAT, "LPC checkpoint",
                           ("config", "state_dict"))
    cfg = from_dict(LPCConfig, {**payload["config"], "pretrained_path": None}, f"{path} config")
    model = LesionProposalClassifier(cfg)
    load_state(model, payload, path, "LPC checkpoint")
    return model.to(device).eval(), cfg, payload
