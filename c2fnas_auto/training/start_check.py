"""Has this training started learning? Signals and a verdict, per epoch.

A short training of the `c2fnas` wiring can sit in a state where it never predicts any
foreground while its loss stays flat, at whatever value (documentation/howto/training.md,
"A training that does not start"). Two signals name it cheaply during training:

- the train pseudo Dice counts: no true-positive foreground voxel in an epoch;
- the dead-head fraction: the share of output voxels whose classifier input is <= 0 in
  every channel. The classifier is ReLU -> 1x1x1 conv, so there the logits are the
  classifier's bias alone and no gradient flows back through that voxel.

`StartMonitor` turns the per-epoch values into a verdict the trainer logs and the search
uses to retrain a candidate with a fresh init seed (once).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

# consecutive epochs without a predicted foreground voxel (and a flat loss) that say "not started"
PATIENCE_EPOCHS = 3
# the loss counts as flat when it moved by less than this over those epochs (Dice + CE units)
STALL_TOLERANCE = 0.05


def classifier_of(network: nn.Module) -> nn.Module | None:
    """The module that maps the last features to class logits, or None for unknown networks.

    Unwraps DistributedDataParallel (`.module`) and torch.compile (`._orig_mod`)."""
    for attr in ("module", "_orig_mod"):
        inner = getattr(network, attr, None)
        if isinstance(inner, nn.Module):
            return classifier_of(inner)
    head = getattr(network, "head_classifier", None)
    return head if isinstance(head, nn.Module) else None


class DeadHeadProbe:
    """Measures the dead-head fraction of every training forward pass while installed.

    Use as a context manager; `fraction()` is the mean over the forward passes seen."""

    def __init__(self, network: nn.Module):
        self.module = classifier_of(network)
        self._handle = None
        self._sum = 0.0
        self._count = 0

    def _hook(self, module: nn.Module, inputs: tuple[Any, ...]) -> None:
        if not module.training or not inputs:
            return
        x = inputs[0]
        with torch.no_grad():
            self._sum += float((x.detach() <= 0).all(dim=1).float().mean().item())
        self._count += 1

    def __enter__(self) -> "DeadHeadProbe":
        if self.module is not None:
            self._handle = self.module.register_forward_pre_hook(self._hook)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def fraction(self) -> float:
        """NaN when the network has no known classifier or no training forward ran."""
        return self._sum / self._count if self._count else float("nan")


@torch.no_grad()
def dead_head_fraction_at(network: nn.Module, x: torch.Tensor) -> float:
    """The dead-head fraction of one forward pass in training mode (e.g. at initialisation)."""
    was_training = network.training
    network.train()
    probe = DeadHeadProbe(network)
    try:
        with probe:
            network(x)
    finally:
        network.train(was_training)
    return probe.fraction()


@dataclass
class StartMonitor:
    """Per-epoch start signals and the verdict.

    During a run: not started when no foreground voxel was predicted correctly in each of
    the last `patience` epochs while the loss moved by less than `stall_tolerance` over
    them (a loss still falling fast may be a slow start). At the end of a run
    (`final=True`): not started when no foreground was predicted in its last `patience`
    epochs (or in all of a shorter run), whatever the loss did: the run produced nothing.
    The measured failures' loss still drifted down (about -0.04 -> -0.19 over 4 epochs)
    while no voxel ever turned foreground (documentation/studies/search_study.md, start study)."""

    patience: int = PATIENCE_EPOCHS
    stall_tolerance: float = STALL_TOLERANCE
    history: list[dict] = field(default_factory=list)

    def update(self, loss: float, foreground_tp: float, dead_head_fraction: float = float("nan")) -> dict:
        rec = {"loss": float(loss), "foreground_tp": float(foreground_tp),
               "dead_head_fraction": float(dead_head_fraction)}
        self.history.append(rec)
        return rec

    def not_started(self, final: bool = False) -> bool:
        if not self.history:
            return False
        window = self.history[-self.patience:]
        if any(r["foreground_tp"] > 0 for r in window):
            return False
        if final:
            return True
        if len(window) < self.patience:
            return False
        losses = [r["loss"] for r in window if math.isfinite(r["loss"])]
        return bool(losses) and max(losses) - min(losses) < self.stall_tolerance

    def warning(self) -> str:
        """The one-line warning the trainer logs once the verdict is 'not started'."""
        last = self.history[-1]
        n = min(len(self.history), self.patience)
        dead = last["dead_head_fraction"]
        dead_text = f", {100 * dead:.1f}% of voxels with an all-<=0 classifier input" if math.isfinite(dead) else ""
        return (f"WARNING: training has not started: no foreground predicted in the last {n} epoch(s), "
                f"loss flat at {last['loss']:.3f}{dead_text}; a fresh init seed (--seed) usually starts "
                f"(documentation/howto/training.md)")
