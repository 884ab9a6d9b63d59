"""Optimiser and learning-rate schedule: nnU-Net's defaults, so trainings compare with its results."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

INITIAL_LR = 1e-2
MOMENTUM = 0.99
WEIGHT_DECAY = 3e-5
POLY_EXPONENT = 0.9
GRAD_CLIP = 12.0
WARMUP_START_MOMENTUM = 0.9  # momentum of the first warm-up step, ramping to the optimiser's own


def poly_lr(epoch: int, max_epochs: int, initial_lr: float = INITIAL_LR, exponent: float = POLY_EXPONENT) -> float:
    """Learning rate for `epoch` (0-based): initial * (1 - epoch / max_epochs) ** exponent."""
    frac = min(max(epoch, 0), max_epochs) / max(max_epochs, 1)
    return initial_lr * (1.0 - frac) ** exponent


def build_optimizer(network: nn.Module, lr: float = INITIAL_LR) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum 0.99 and weight decay 3e-5."""
    return torch.optim.SGD(network.parameters(), lr=lr, momentum=MOMENTUM, nesterov=True,
                           weight_decay=WEIGHT_DECAY)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


@contextmanager
def warmed_up(optimizer: torch.optim.Optimizer, step: int, warmup_iterations: int) -> Iterator[None]:
    """Within the first `warmup_iterations` steps, step with a linearly ramped learning rate
    (from 1/warmup of the epoch's) and momentum (from WARMUP_START_MOMENTUM); the groups'
    own values are restored afterwards, so the epoch schedule stays the one place that sets them."""
    if step >= warmup_iterations:
        yield
        return
    f = (step + 1) / warmup_iterations
    saved = [(g["lr"], g.get("momentum")) for g in optimizer.param_groups]
    for g in optimizer.param_groups:
        g["lr"] = g["lr"] * f
        if g.get("momentum"):
            g["momentum"] = WARMUP_START_MOMENTUM + f * (g["momentum"] - WARMUP_START_MOMENTUM)
    try:
        yield
    finally:
        for g, (lr, momentum) in zip(optimizer.param_groups, saved):
            g["lr"] = lr
            if momentum is not None:
                g["momentum"] = momentum
