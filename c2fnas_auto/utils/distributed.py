"""The one torchrun helper of training and the search (every call is a no-op in a single process).

Training all-reduces its epoch statistics and lets DistributedDataParallel sync gradients;
the search uses one broadcast only, to start every rank on the folder rank 0 opened, and then
shares candidates through its Optuna trials, so a slow rank stalls nobody.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass
class DistContext:
    """This process's place in the torchrun group (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized_here: bool = False  # the group was created by `init_distributed`, so `close` ends it

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's value of `obj` on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.barrier()

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Sum a short list of numbers over ranks (pseudo-Dice counts, losses)."""
        if not self.enabled:
            return values
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return t.tolist()

    def close(self) -> None:
        if self.initialized_here and dist.is_initialized():
            dist.destroy_process_group()


def init_distributed(device_type: str = "cpu", timeout: datetime.timedelta | None = None) -> DistContext:
    """Join the torchrun group when WORLD_SIZE > 1: NCCL on CUDA (each rank on GPU LOCAL_RANK),
    gloo on the CPU. LOCAL_RANK defaults to RANK (one node). `timeout`: how long a collective
    waits for the slowest rank; None is torch's default."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    here = False
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        kwargs = {} if timeout is None else {"timeout": timeout}
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo", **kwargs)
        here = True
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, initialized_here=here)


def split_batch(global_batch: int, info: DistContext) -> tuple[int, int]:
    """(size, offset) of this rank's share of the global batch; earlier ranks take the remainder.

    Every rank gets at least one sample, so a global batch smaller than the world size
    grows to one sample per rank."""
    base, rest = divmod(global_batch, info.world_size)
    if base == 0:
        return 1, info.rank
    size = base + (1 if info.rank < rest else 0)
    return size, info.rank * base + min(info.rank, rest)
