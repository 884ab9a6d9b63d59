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
NORM_RANGE = "c2fnas::instance_norm_ndhwc"  # a profiler range, so a profile can count its ops as the norm's


def is_channels_last(x: torch.Tensor) -> bool:
    """NDHWC strides that differ from NCDHW's (one channel or one voxel: both layouts are one)."""
    return x.dim() == 5 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last_3d)


class InstanceNormNDHWC(torch.autograd.Function):
    """Instance norm of an NDHWC tensor whose output and input gradient stay NDHWC.

    Every full-size op runs in the input's dtype: a bf16 tensor is never copied to float32
    (`sum(dtype=float32)` converts the whole tensor first: 57 ms of a 0.86 s bf16 step). Sums
    accumulate in float32 inside PyTorch's kernel and come out in the input's dtype. The
    values are centred on the mean as that dtype holds it, `d = x - m`, so that neither the
    variance nor the gradient's sum(dy * (x - mean)) cancels: `d` is small wherever the mean
    dominates, its error is relative to itself, and the exact mean is m + mean(d). `d`, not `x`, is kept
    for backward (the same bytes). Backward in closed form, dx = a*dy - k*d + c per (sample,
    channel).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                eps: float) -> torch.Tensor:
        acc = torch.promote_types(x.dtype, torch.float32)
        n = x.shape[2] * x.shape[3] * x.shape[4]
        rounded = x.sum(SPATIAL, keepdim=True) / n
        d = x - rounded
        off = _sum(d, acc) / n  # mean - rounded
        var = (_sum(d * d, acc) / n - off * off).clamp_(min=0)
        rstd = torch.rsqrt(var + eps)
        scale = rstd if weight is None else rstd * weight.to(acc).view(1, -1, 1, 1, 1)
        shift = -off * scale  # y = (d - off) * scale (+ bias)
        if bias is not None:
            shift = shift + bias.to(acc).view(1, -1, 1, 1, 1)
        ctx.save_for_backward(d, off, rstd, weight)
        ctx.bias_dtype = None if bias is None else bias.dtype
        return torch.addcmul(shift.to(x.dtype), d, scale.to(x.dtype))

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        d, off, rstd, weight = ctx.saved_tensors
        n = d.shape[2] * d.shape[3] * d.shape[4]
        sum_dy = _sum(dy, off.dtype)
        sum_dyc = _sum(dy * d, off.dtype) - off * sum_dy  # sum(dy * (x - mean))
        a = rstd if weight is None else rstd * weight.to(off.dtype).view(1, -1, 1, 1, 1)
        k = a * rstd * rstd * sum_dyc / n
        c = k * off - a * sum_dy / n  # dx = a*dy - k*(d - off) - a*mean(dy)
        dx = torch.addcmul(c.to(dy.dtype), dy, a.to(dy.dtype)).addcmul_(d, (-k).to(d.dtype))
        dw = None if weight is None else (rstd * sum_dyc).sum(0).view(-1).to(weight.dtype)
        db = None if ctx.bias_dtype is None else sum_dy.sum(0).view(-1).to(ctx.bias_dtype)
        return dx, dw, db, None


def _sum(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Per (sample, channel) sum over the voxels, in `x`'s dtype, as `dtype`."""
    return x.sum(SPATIAL, keepdim=True).to(dtype)


class InstanceNorm(nn.InstanceNorm3d):
    """nn.InstanceNorm3d (same parameters and names) that keeps NDHWC input NDHWC."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if is_channels_last(x) and not self.track_running_stats:
            with torch.profiler.record_function(NORM_RANGE):
                return InstanceNormNDHWC.apply(x, self.weight, self.bias, self.eps)
        return super().forward(x)


def spatial_last(x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """A view of `x` whose memory order is its axis order, and where its z, y, x axes are.

    NCDHW: `x` itself, axes (2, 3, 4); NDHWC: the (N, D, H, W, C) view, axes (1, 2, 3). Ops
    that build new tensors along spatial axes (cat, stack, reshape) on this view make
    outputs in `x`'s own layout; `restore` turns them back into (N, C, D, H, W).
    """
    if x.dim() == 5 and x.shape[1] > 1 and x.stride(1) == 1 and not x.is_contiguous():
        return x.permute(0, 2, 3, 4, 1), (1, 2, 3)  # channels innermost (NDHWC, or a slice of it)
    return x, SPATIAL


def restore(v: torch.Tensor, axes: tuple[int, int, int]) -> torch.Tensor:
    """The (N, C, D, H, W) tensor of a `spatial_last` view (`axes` as it returned them)."""
    return v if axes == SPATIAL else v.permute(0, 4, 1, 2, 3)
