"""Spreading the candidates of one generation across `torchrun` ranks.

Every rank runs the same deterministic search (same seed, same gathered scores), so
all ranks propose the same batch; each evaluates its slice `batch[rank::world]` on its
own device and `all_gather_object` hands every rank every result. Only rank 0 writes
files. Without `WORLD_SIZE` > 1 this is a plain loop in one process.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

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

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's value of `obj` on every rank."""
        if not self.active:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        """`[fn(x) for x in items]`, each rank computing its share. An exception on one
        rank is re-raised on every rank (as RuntimeError) so no rank waits forever."""
        if not self.active:
            return [fn(x) for x in items]
        mine: list[tuple[int, Any, str | None]] = []
        for i in range(self.rank, len(items), self.world_size):
            try:
                mine.append((i, fn(items[i]), None))
            except Exception as exc:  # noqa: BLE001 - forwarded to all ranks below
                mine.append((i, None, f"rank {self.rank}: {exc!r}"))
                break
        gathered: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(gathered, mine)
        out: list[Any] = [None] * len(items)
        errors = []
        for part in gathered:
            for i, value, err in part:
                if err is not None:
                    errors.append(err)
                else:
                    out[i] = value
        if errors:
            raise RuntimeError("candidate evaluation failed on " + "; ".join(errors))
        return out

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
        # long timeout: rank 0 alone trains the supernet while the others wait at a barrier
        torch.distributed.init_process_group(backend=backend, timeout=datetime.timedelta(hours=48))
        here = True
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, initialized_here=here)
