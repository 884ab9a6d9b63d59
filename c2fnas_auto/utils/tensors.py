"""Tensor helpers the stages share, where PyTorch's general kernel is slow for our shapes."""

from __future__ import annotations

import torch


def channel_argmax(x: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """`x.argmax(dim)` for a short class axis, exactly (first maximum on ties, a NaN counts as
    the maximum as in `torch.argmax`), by one elementwise pass per class.

    Why: PyTorch's CPU argmax over a non-innermost axis of 2-10 classes runs a strided
    reduction per voxel; for 3 classes on a 2 x 32 x 64 x 64 batch it took 48 ms, this 1-2 ms
    (2 cores), and the training loop takes it every step."""
    dim = dim % x.ndim
    if x.shape[dim] == 0:
        return x.argmax(dim)  # the error torch gives
    best = x.select(dim, 0).clone()
    pred = torch.zeros(best.shape, dtype=torch.long, device=x.device)
    nan = torch.isnan(best)
    for c in range(1, x.shape[dim]):
        xc = x.select(dim, c)
        xc_nan = torch.isnan(xc)
        better = (xc > best) | (xc_nan & ~nan)  # a NaN beats everything but an earlier NaN
        pred.masked_fill_(better, c)
        best = torch.where(better, xc, best)
        nan |= xc_nan
    return pred
