"""Decode CenterNet outputs into 2D boxes: max-pool peaks, top K, centre + offset +- size / 2."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lesion_harvester.lpg.losses import clamped_sigmoid


def decode(hm_logits: torch.Tensor, wh: torch.Tensor, reg: torch.Tensor, k: int = 100, stride: int = 4):
    """Boxes and scores of the K highest peaks per image.

    Returns boxes (B, K, 4) as inclusive pixel ``x1, y1, x2, y2`` of the network input, and scores (B, K).
    """
    heat = clamped_sigmoid(hm_logits)
    # CenterNet's 3x3 peaks at stride 4; 5x5 at stride 2, so that a peak suppresses its neighbours
    # over about the same input extent (12 and 10 px)
    radius = max(1, 4 // stride)
    peaks = F.max_pool2d(heat, 2 * radius + 1, stride=1, padding=radius)
    heat = heat * (peaks == heat).float()
    b, _, h, w = heat.shape
    k = min(k, h * w)
    scores, idx = heat.view(b, -1).topk(k)
    ys = torch.div(idx, w, rounding_mode="floor").float()
    xs = (idx % w).float()
    off = reg.float().view(b, 2, -1).gather(2, idx.unsqueeze(1).expand(-1, 2, -1))
    # at least one input pixel wide, so that x2 >= x1 in the inclusive convention
    size = wh.float().view(b, 2, -1).gather(2, idx.unsqueeze(1).expand(-1, 2, -1)).clamp(min=1.0 / stride)
    cx = (xs + off[:, 0] + 0.5) * stride - 0.5
    cy = (ys + off[:, 1] + 0.5) * stride - 0.5
    half_w, half_h = size[:, 0] * stride / 2, size[:, 1] * stride / 2
    boxes = torch.stack([cx - half_w + 0.5, cy - half_h + 0.5, cx + half_w - 0.5, cy + half_h - 0.5], dim=-1)
    return boxes, scores
