"""Dice + cross-entropy loss, with deep-supervision weighting.

Batch Dice (statistics pooled over the whole batch, as nnU-Net does) is stable on small
batches where a sample may contain no foreground; background is left out of the Dice
term because cross-entropy already covers it.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5,
                   batch_dice: bool = True, include_background: bool = False) -> torch.Tensor:
    """Negative mean soft Dice of softmax(logits) against integer `target` (B, 1, ...) or (B, ...)."""
    if target.ndim == logits.ndim:
        target = target[:, 0]
    probs = torch.softmax(logits.float(), dim=1)
    onehot = F.one_hot(target.long(), logits.shape[1]).movedim(-1, 1).to(probs.dtype)
    if not include_background:
        probs, onehot = probs[:, 1:], onehot[:, 1:]
    axes = [0] + list(range(2, logits.ndim)) if batch_dice else list(range(2, logits.ndim))
    intersect = (probs * onehot).sum(axes)
    denom = probs.sum(axes) + onehot.sum(axes)
    dice = (2 * intersect + smooth) / torch.clamp(denom + smooth, min=1e-8)
    return -dice.mean()


class DiceCELoss(nn.Module):
    """Cross-entropy + soft (batch) Dice, each with weight 1."""

    def __init__(self, batch_dice: bool = True, smooth: float = 1e-5):
        super().__init__()
        self.batch_dice = batch_dice
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        t = target[:, 0] if target.ndim == logits.ndim else target
        ce = F.cross_entropy(logits.float(), t.long())
        return ce + soft_dice_loss(logits, t, self.smooth, self.batch_dice)


def deep_supervision_weights(n: int) -> list[float]:
    """1, 1/2, 1/4, ... for the outputs (full resolution first), normalised to sum to 1."""
    w = [0.5 ** i for i in range(n)]
    s = sum(w)
    return [x / s for x in w]


def downsample_target(target: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Nearest-neighbour resize of an integer label map (B, 1, ...) to spatial `shape`."""
    if tuple(target.shape[2:]) == tuple(shape):
        return target
    return F.interpolate(target.float(), size=tuple(shape), mode="nearest").to(target.dtype)


class DeepSupervisionLoss(nn.Module):
    """Apply `base` to every output of a deep-supervised network, weights halving per level.

    A single tensor output is passed straight to `base`, so the same loss object serves
    networks with and without deep supervision.
    """

    def __init__(self, base: nn.Module | None = None):
        super().__init__()
        self.base = base if base is not None else DiceCELoss()

    def forward(self, outputs: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        if target.ndim == (outputs.ndim if isinstance(outputs, torch.Tensor) else outputs[0].ndim) - 1:
            target = target[:, None]
        if isinstance(outputs, torch.Tensor):
            return self.base(outputs, target)
        weights = deep_supervision_weights(len(outputs))
        total = 0.0
        for w, out in zip(weights, outputs):
            total = total + w * self.base(out, downsample_target(target, out.shape[2:]))
        return total
