"""A network for DistributedDataParallel training: batch norm over the global batch, then DDP.

Each rank sees its share of every batch (:meth:`lesion_harvester.distributed.Distributed.batch_share`).
With plain batch norm each rank would normalize with the statistics of its share, so N processes
would not train what one process does on the whole batch. On GPUs, torch's ``SyncBatchNorm`` shares
the statistics; it does not run on the CPU, where :class:`GlooSyncBatchNorm` does the same with
autograd-aware all-reduces (its gradients are summed over the ranks by the all-reduce's backward).
"""

from __future__ import annotations

import torch
import torch.distributed.nn.functional as dist_nn
from torch import nn


class GlooSyncBatchNorm(nn.BatchNorm2d):
    """``BatchNorm2d`` whose training statistics are those of the batch over all ranks (any backend).

    The same parameters and buffers as ``BatchNorm2d``, so state dicts load either way. Two
    all-reduces per call (the mean, then the centred second moment) keep the variance as exact
    as a one-process batch norm's.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C, H, W)
        if not self.training:
            return super().forward(x)
        dims = (0, 2, 3)
        count = torch.full((1,), x.numel() / x.shape[1], dtype=x.dtype, device=x.device)
        sums = dist_nn.all_reduce(torch.cat([x.sum(dims), count]))
        n = sums[-1]
        mean = sums[:-1] / n
        centred = x - mean[None, :, None, None]
        var = dist_nn.all_reduce((centred * centred).sum(dims)) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
                unbiased = var.detach() * (float(n) / max(float(n) - 1, 1.0))  # as BatchNorm2d keeps it
                self.running_var.mul_(1 - momentum).add_(unbiased, alpha=momentum)
        y = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.weight is None:
            return y
        return y * self.weight[None, :, None, None] + self.bias[None, :, None, None]


def sync_batch_norm(model: nn.Module, device: str) -> nn.Module:
    """``model`` with every ``BatchNorm2d`` normalizing over the global batch (in place, same weights)."""
    if device.startswith("cuda"):
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            synced = GlooSyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                       child.track_running_stats).to(child.weight.device)
            synced.load_state_dict(child.state_dict())
            setattr(model, name, synced)
        else:
            sync_batch_norm(child, device)
    return model


def distributed_model(model: nn.Module, device: str) -> nn.Module:
    """``model`` for DDP training: batch norm over the global batch, gradients averaged over the ranks.
    Train through the returned wrapper; ``model`` itself (same parameters) serves for evaluation and saving."""
    sync_batch_norm(model, device)
    device_ids = [torch.device(device).index] if device.startswith("cuda") else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
