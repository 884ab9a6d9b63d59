"""Stopping a training run cleanly when a cluster scheduler asks (SIGTERM, SIGUSR1).

SLURM sends SIGTERM before it preempts or cancels a job, and `--signal=USR1@SECONDS` sends
SIGUSR1 ahead of the time limit. Either signal only sets a flag here; the trainer sees it
before it starts the next training iteration (the running one finishes), writes
checkpoint_latest.pth atomically and exits with `STOPPED_EXIT_CODE` (utils/stop_signals.py),
so a job script can tell "stopped on request, resume me" apart from success and from a crash.
`--continue` resumes from that checkpoint. A second signal is ignored: the running iteration
ends within seconds.

Under torchrun every rank checks the flag each iteration and the ranks agree (a max over
ranks), so all of them stop at the same iteration and no collective is left waiting.
"""

from __future__ import annotations

from typing import Iterator

import torch
import torch.distributed as dist

from c2fnas_auto.utils.stop_signals import StopFlag, Stopped


class TrainingStopped(Stopped):
    """Raised between iterations once a stop signal arrived; `signal_name` names it."""


def agreed_stop(flag: StopFlag, dist_info, device: torch.device) -> bool:
    """True on every rank as soon as any rank received a stop signal (one tiny all-reduce on the
    training device: NCCL cannot reduce CPU tensors)."""
    local = flag.is_set
    if not dist_info.enabled:
        return local
    t = torch.tensor([1.0 if local else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def stop_checked(batches: Iterator[dict], flag: StopFlag, dist_info, device: torch.device) -> Iterator[dict]:
    """Pass batches through; raise TrainingStopped instead of handing out the next one after a
    stop signal, i.e. once the iteration that was running when it came has finished."""
    while True:
        if agreed_stop(flag, dist_info, device):
            raise TrainingStopped(flag.signal_name or "a stop signal on another rank")
        yield next(batches)
