"""Channels-last (NDHWC) activations kept channels-last from the first conv to the last.

oneDNN's 3D convolutions are faster on NDHWC than on NCDHW on a CPU (forward + backward at
the network's shapes, 2 threads: 1x1x1 convs 1.5-5x, the others up to 1.35x at full
resolution and about equal at the deep levels), but only when they get NDHWC input: every op in between
that hands back NCDHW makes the next conv transpose its input, forward and backward, and
those transposes cost more than the convs save. PyTorch's instance norm is such an op (it
reshapes to (1, N*C, ...) and copies); the helpers here are the ones that are not.
"""

from __future__ import annotations

import torch
from torch import nn

SPATIAL = (2, 3, 4)


def is_channels_last(x: torch.Tensor) -> bool:
    """NDHWC strides that differ from NCDHW's (one channel or one voxel: both layouts are one)."""
    return x.dim() == 5 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last_3d)


class _InstanceNormNDHWC(torch.autograd.Function):
    """Instance norm of an NDHWC tensor whose output and input gradient stay NDHWC.

    Statistics in float32 at least (as PyTorch's own kernel for bf16 input), the variance
    from the centred values (the one-pass formula loses digits when the mean dominates).
    Backward in closed form, dx = a*dy + b*x + c per (sample, channel), every term an
    elementwise pass or a sum over the voxels, which keep the layout.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                eps: float) -> torch.Tensor:
        acc = torch.promote_types(x.dtype, torch.float32)
        n = x.shape[2] * x.shape[3] * x.shape[4]
        mean = x.sum(SPATIAL, keepdim=True, dtype=acc) / n
        centred = x - mean
        rstd = torch.rsqrt(centred.mul_(centred).sum(SPATIAL, keepdim=True) / n + eps)
        scale = rstd if weight is None else rstd * weight.to(acc).view(1, -1, 1, 1, 1)
        shift = -mean * scale
        if bias is not None:
            shift = shift + bias.to(acc).view(1, -1, 1, 1, 1)
        ctx.save_for_backward(x, mean, rstd, weight)
        ctx.bias_dtype = None if bias is None else bias.dtype
        return torch.addcmul(shift.to(x.dtype), x, scale.to(x.dtype))

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        x, mean, rstd, weight = ctx.saved_tensors
        n = x.shape[2] * x.shape[3] * x.shape[4]
        sum_dy = dy.sum(SPATIAL, keepdim=True, dtype=mean.dtype)
        # centred before the product: sum(dy * x) - mean * sum(dy) cancels catastrophically when
        # the variance is small next to the mean, and rstd**3 below multiplies that error
        sum_dyc = (dy * (x - mean)).sum(SPATIAL, keepdim=True)
        a = rstd if weight is None else rstd * weight.to(mean.dtype).view(1, -1, 1, 1, 1)
        k = a * rstd * rstd * sum_dyc / n
        c = mean * k - a * sum_dy / n
        dx = torch.addcmul(c.to(dy.dtype), dy, a.to(dy.dtype)).addcmul_(x, (-k).to(x.dtype))
        dw = None if weight is None else (rstd * sum_dyc).sum(0).view(-1).to(weight.dtype)
        db = None if ctx.bias_dtype is None else sum_dy.sum(0).view(-1).to(ctx.bias_dtype)
        return dx, dw, db, None


class InstanceNorm(nn.InstanceNorm3d):
    """nn.InstanceNorm3d (same parameters and names) that keeps NDHWC input NDHWC."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if is_channels_last(x) and not self.track_running_stats:
            return _InstanceNormNDHWC.apply(x, self.weight, self.bias, self.eps)
        return super().forward(x)


def spatial_last(x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """A view of `x` whose memory order is its axis order, and where its z, y, x axes are.

    NCDHW: `x` itself, axes (2, 3, 4); NDHWC: the (N, D, H, W, C) view, axes (1, 2, 3). Ops
    that build new tensors along spatial axes (cat, stack, reshape) on this view make
    outputs in `x`'s own layout; `restore` turns them back into (N, C, D, H, W).
    """
    if is_channels_last(x):
        return x.permute(0, 2, 3, 4, 1), (1, 2, 3)
    return x, SPATIAL


def restore(v: torch.Tensor, axes: tuple[int, int, int]) -> torch.Tensor:
    """The (N, C, D, H, W) tensor of a `spatial_last` view (`axes` as it returned them)."""
    return v if axes == SPATIAL else v.permute(0, 4, 1, 2, 3)
