"""Joining a `torchrun` group, only to start every rank on the same opened search.

Rank 0 opens (or, with --overwrite, clears) the search folder and broadcasts the state;
after that the ranks never call a collective again: they share candidates through the
search's Optuna trials (`optuna_trials.py`), so a slow rank stalls nobody and a killed one loses only
its own candidate. Without `WORLD_SIZE` > 1 this is a single process and does nothing.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's value of `obj` on every rank."""
        if not self.active:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if self.initialized_here and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def init_distributed(device_type: str = "cpu") -> DistContext:
    """Join the `torchrun` group when WORLD_SIZE > 1 (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    here = False
    if not torch.distributed.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        torch.distributed.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
        here = True
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, initialized_here=here)
