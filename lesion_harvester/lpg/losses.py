"""CenterNet losses: the focal loss of the paper's Eq. 1 (HNSL when the target has negative values)
and L1 size and offset losses at object centres."""

from __future__ import annotations

import torch
import torch.nn.functional as F

ALPHA, BETA = 2.0, 4.0


def clamped_sigmoid(logits: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(logits.float()).clamp(1e-4, 1 - 1e-4)


def focal_loss(pred: torch.Tensor, target: torch.Tensor, alpha: float = ALPHA, beta: float = BETA,
               ignore: torch.Tensor | None = None, num_pos: torch.Tensor | None = None) -> torch.Tensor:
    """Penalty-reduced focal loss, normalised by the number of objects (``num_pos``: of the global
    batch, when this is one rank's share; default: of ``target``).

    pred: (B, 1, H, W) probabilities in (0, 1). target: same shape, 1 at object centres, Gaussian
    values in [0, 1) around them and, with the hard negative suppression loss, negative values at
    hard negatives: their weight (1 - Y)^beta reaches 2^4 = 16 at a hard-negative centre, where plain
    background has weight 1. ignore: optional boolean mask of pixels whose negative term is dropped.
    """
    pos = target.eq(1).float()
    neg = 1.0 - pos
    if ignore is not None:
        neg = neg * (~ignore).float()
    neg_weight = torch.pow(1 - target, beta)
    pos_loss = torch.log(pred) * torch.pow(1 - pred, alpha) * pos
    neg_loss = torch.log(1 - pred) * torch.pow(pred, alpha) * neg_weight * neg
    num_pos = pos.sum() if num_pos is None else num_pos
    if num_pos == 0:
        return -neg_loss.sum()
    return -(pos_loss.sum() + neg_loss.sum()) / num_pos


def reg_l1_loss(output: torch.Tensor, ind: torch.Tensor, mask: torch.Tensor, target: torch.Tensor,
                num_masked: torch.Tensor | None = None) -> torch.Tensor:
    """L1 between ``output`` (B, 2, H, W) gathered at ``ind`` (B, K) and ``target`` (B, K, 2), mean
    over the masked object coordinates (``num_masked`` of them in the global batch; default: in ``mask``)."""
    b, c, h, w = output.shape
    flat = output.float().view(b, c, h * w).permute(0, 2, 1)  # (B, HW, 2)
    gathered = flat.gather(1, ind.unsqueeze(-1).expand(-1, -1, c))
    m = mask.unsqueeze(-1).expand_as(gathered)
    num_masked = m.sum() if num_masked is None else num_masked
    return F.l1_loss(gathered * m, target * m, reduction="sum") / (num_masked + 1e-4)


def soft_negatives(pred: torch.Tensor, target: torch.Tensor, complete: torch.Tensor, above: float) -> torch.Tensor:
    """(B, 1, H, W) mask of plain background (target 0) that the model scores above ``above`` in
    crops from partially labelled volumes (``complete`` (B,) is 0 there): possible unmarked lesions,
    which the loss should not teach as background. Hard negatives (target < 0) stay taught."""
    incomplete = complete.view(-1, 1, 1, 1) < 0.5
    return incomplete & target.eq(0) & (pred.detach() > above)


def loss_counts(batch) -> torch.Tensor:
    """(objects, masked size coordinates) of a batch's targets: what the losses are normalised by."""
    return torch.stack([batch["hm"].eq(1).sum(), 2 * batch["mask"].sum()]).float()


def centernet_loss(outputs, batch, wh_weight: float = 0.1, off_weight: float = 1.0,
                   soft_negative_above: float | None = None,
                   counts: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """Total loss (hm 1, wh 0.1, offset 1) and its parts; ``soft_negative_above``: see
    :func:`soft_negatives` (needs ``batch["complete"]``). ``counts``: :func:`loss_counts` of the
    global batch when ``batch`` is one rank's share (summed over the ranks), so that the ranks'
    losses add up to the one-process loss of the whole batch."""
    hm_logits, wh, reg = outputs
    pred = clamped_sigmoid(hm_logits)
    ignore = None
    if soft_negative_above is not None:
        ignore = soft_negatives(pred, batch["hm"], batch["complete"], soft_negative_above)
    num_pos, num_masked = (None, None) if counts is None else counts
    hm = focal_loss(pred, batch["hm"], ignore=ignore, num_pos=num_pos)
    wh_l = reg_l1_loss(wh, batch["ind"], batch["mask"], batch["wh"], num_masked)
    off = reg_l1_loss(reg, batch["ind"], batch["mask"], batch["reg"], num_masked)
    total = hm + wh_weight * wh_l + off_weight * off
    return total, {"hm": float(hm.detach()), "wh": float(wh_l.detach()), "off": float(off.detach())}
