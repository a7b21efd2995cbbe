"""Several processes of one command under torchrun: which one this is, and the collective steps used.

``torchrun --nproc-per-node N $(which lesion-harvester) COMMAND ...`` starts N copies of a command
with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address in their environment
(across machines too, with torchrun's ``--nnodes`` and ``--rdzv-*`` flags). :func:`join` reads them
and joins PyTorch's process group (gloo on the CPU, NCCL on GPUs); a plain run is rank 0 of 1 and
never touches ``torch.distributed``. The commands receive the resulting :class:`Distributed`
explicitly: scans split their volumes with :meth:`Distributed.shard`, training splits each batch with
:meth:`Distributed.batch_share`, and only the main rank writes shared files.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from lesion_harvester.errors import ConfigError

T = TypeVar("T")

# Ranks wait for each other at barriers, e.g. while the slowest one finishes its share of a scan or
# the main rank writes a merged output; the process group's default of 30 minutes is too short for
# that, and a rank that dies is noticed by torchrun, which stops the others.
COLLECTIVE_TIMEOUT = datetime.timedelta(hours=12)


@dataclass(frozen=True)
class Distributed:
    """This process's place among the ``world_size`` processes of one command (default: alone)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0  # on this machine: which GPU it drives

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """The rank that writes shared outputs and logs."""
        return self.rank == 0

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's share of ``items``: every ``world_size``-th, starting at its rank."""
        return list(items[self.rank::self.world_size])

    def batch_share(self, batch_size: int) -> tuple[int, int]:
        """(first, stop): the samples of each global batch that this rank draws."""
        if batch_size % self.world_size:
            raise ConfigError(f"batch size {batch_size} cannot be split evenly among {self.world_size} processes; "
                              f"choose a multiple of {self.world_size}")
        share = batch_size // self.world_size
        return self.rank * share, (self.rank + 1) * share

    def device(self, device: str) -> str:
        """The device of this rank: with several ranks on GPUs, ``cuda`` means the local rank's GPU."""
        return f"cuda:{self.local_rank}" if self.active and device == "cuda" else device

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()

    def all_sum(self, tensor):
        """``tensor`` summed over the ranks (a new tensor; ``tensor`` itself when alone)."""
        if not self.active:
            return tensor
        import torch.distributed as dist

        total = tensor.detach().clone()
        dist.all_reduce(total)
        return total

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (picklable), in rank order, on every rank."""
        if not self.active:
            return [value]
        import torch.distributed as dist

        values: list[Any] = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values


ALONE = Distributed()  # a plain run: rank 0 of 1 (immutable, so a safe default argument)


def join(device: str = "cpu") -> Distributed:
    """This process's :class:`Distributed`, from torchrun's environment; joins the process group
    (once per process) when there are several. ``device``: the resolved ``--device`` (NCCL for
    CUDA, gloo otherwise)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    import torch
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        cuda = device.startswith("cuda")
        if cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if cuda else "gloo", timeout=COLLECTIVE_TIMEOUT)
    return Distributed(dist.get_rank(), dist.get_world_size(), local_rank)


def leave() -> None:
    """Leave the process group, if this process joined one (at the end of a command)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
