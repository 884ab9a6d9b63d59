"""PyTorch modules for the conv units and cell operations of the layer plan."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from c2fnas_auto.nas.layout import InstanceNorm, is_channels_last, restore, spatial_last
from c2fnas_auto.nas.plan import ConvUnit
from c2fnas_auto.utils.fast_paths import fast_paths


class ConvBlock(nn.Module):
    """[upsample] -> [ReLU] -> [upsample] -> Conv3d -> [InstanceNorm3d], as a ConvUnit says.

    ReLU -> upsample -> 3x3x3 conv (the wired head's expand) runs as one conv at the low
    resolution (`upsample_conv3d`): same result to float rounding, same weights.

    The ReLU is in-place only where the caller says its input is read by this block alone
    (`inplace_relu`): elsewhere the input is a cell output that a skip, a second input or the
    head still reads. In place, it saves one activation-sized allocation and memory pass, and
    autograd then keeps a single tensor for ReLU and conv backward instead of two.
    """

    def __init__(self, unit: ConvUnit, inplace_relu: bool = False):
        super().__init__()
        self.unit = unit
        self.upsample = Upsample(unit.upsample) if unit.upsample is not None else None
        self.relu = nn.ReLU(inplace=inplace_relu) if unit.relu else None
        self.conv = nn.Conv3d(unit.in_channels, unit.out_channels, unit.kernel, stride=unit.stride,
                              padding=unit.padding, bias=unit.bias)
        self.norm = InstanceNorm(unit.out_channels, affine=unit.affine) if unit.norm else None
        # upsample -> 3x3x3 conv as one conv at the low resolution (see upsample_conv3d)
        self.fused_upsample = unit.fused_upsample and fast_paths().fused_upsample
        self.in_plane_unit = unit.kernel[1:] == (1, 1) and unit.stride == (1, 1, 1)  # 1x1x1 or 3x1x1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.upsample is not None and self.unit.upsample_first:
            x = self.upsample(x)
        if self.relu is not None:
            x = self.relu(x)
        # ONNX export runs the two-op form (same weights): the TorchScript-based exporter mistraces
        # upsample_conv3d's in-place border-plane writes (the exported file was off by 1.4)
        if self.fused_upsample and not torch.onnx.is_in_onnx_export():
            x = upsample_conv3d(x, self.conv.weight, self.conv.bias, self.unit.upsample_factors)
        elif self.upsample is not None and not self.unit.upsample_first:
            x = self.conv(self.upsample(x))
        elif self.in_plane_unit and single_thread_fp32_channels_last(x):
            x = in_plane_unit_conv(x, self.conv.weight, self.conv.bias, self.unit.padding[0])
        else:
            x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        return x


def single_thread_fp32_channels_last(x: torch.Tensor) -> bool:
    """Where PyTorch runs a conv whose kernel is 1x1 in-plane (1x1x1, 3x1x1) slowly on NDHWC input
    and hands back NCDHW: float32 on one thread, where it skips oneDNN (at 2 x 64 x 32^3, forward +
    backward: 52 ms for a 1x1x1, 162 ms for a 3x1x1, against 21 and 35 ms for `in_plane_unit_conv`;
    bf16 and 2+ threads take oneDNN and keep NDHWC)."""
    return (x.dtype == torch.float32 and not torch.is_autocast_enabled("cpu") and x.device.type == "cpu"
            and torch.get_num_threads() == 1 and is_channels_last(x))


def in_plane_unit_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, pad: int) -> torch.Tensor:
    """A stride-1 conv with a (k, 1, 1) kernel on NDHWC input, NDHWC out: a 1x1x1 as one GEMM on the
    (N, D, H, W, C) view, a k x 1 x 1 as a 2D conv over (D, H*W) (the merged axes are adjacent in
    memory, so both are views)."""
    o, c, k = weight.shape[:3]
    if k == 1:
        return F.linear(x.permute(0, 2, 3, 4, 1), weight.view(o, c), bias).permute(0, 4, 1, 2, 3)
    n, _, d, h, w = x.shape
    return F.conv2d(x.view(n, c, d, h * w), weight.view(o, c, k, 1), bias, padding=(pad, 0)).view(n, o, d, h, w)


def make_op(units: Sequence[ConvUnit], own_input: bool = False) -> nn.Sequential:
    """A cell operation: its conv units in sequence (one for 2d/3d, two for p3d).

    `own_input`: nothing else reads the op's input, so its first ReLU may run in place.
    A later unit's input is the previous unit's fresh output (its ReLU may always be in place).
    """
    return nn.Sequential(*(ConvBlock(u, inplace_relu=own_input or i > 0) for i, u in enumerate(units)))


UPSAMPLE_RANGE = "c2fnas::upsample_x2"


class Upsample(nn.Module):
    """Trilinear upsampling by an exact per-axis factor (the inverse of a stride).

    Factors of 1 and 2 (every stride the planner makes) run axis by axis (`upsample_x2`):
    the same values to float rounding, 2-5x faster than `F.interpolate`'s trilinear kernel
    forward and backward on a CPU (which is slower still under bf16). Built with the
    `axis_upsample` fast path off (utils/fast_paths.py), other factors and ONNX export (a
    single Resize node) take `F.interpolate`.
    """

    def __init__(self, scale: tuple[float, float, float]):
        super().__init__()
        self.scale = tuple(float(s) for s in scale)
        self.factors = tuple(int(s) for s in self.scale) if all(s in (1.0, 2.0) for s in self.scale) else None
        self.fast = fast_paths().axis_upsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fast and self.factors is not None and not torch.onnx.is_in_onnx_export():
            with torch.profiler.record_function(UPSAMPLE_RANGE):  # so a profile can tell its ops from others
                return upsample_x2(x, self.factors)
        size = [int(round(n * s)) for n, s in zip(x.shape[2:], self.scale)]
        return nn.functional.interpolate(x, size=size, mode="trilinear", align_corners=False)


def upsample_x2(x: torch.Tensor, factors: Sequence[int]) -> torch.Tensor:
    """Trilinear upsampling (align_corners=False) of a (N, C, D, H, W) tensor by a factor of 1
    or 2 per spatial axis, one axis at a time (the interpolation is separable), fastest axis
    first. Along a doubled axis fine sample 2i is 0.25 x[i-1] + 0.75 x[i] and 2i+1 is
    0.75 x[i] + 0.25 x[i+1], with x clamped at the ends: two lerps on shifted views of the
    edge-padded input, interleaved. Only elementwise ops and copies, so backward is as cheap.
    Runs on the memory-ordered view (`layout.spatial_last`): the output keeps x's layout."""
    v, axes = spatial_last(x)
    for axis, f in reversed(list(zip(axes, factors))):
        if f == 1:
            continue
        n = v.shape[axis]
        padded = torch.cat([v.narrow(axis, 0, 1), v, v.narrow(axis, n - 1, 1)], axis)
        centre = padded.narrow(axis, 1, n)
        even = torch.lerp(centre, padded.narrow(axis, 0, n), 0.25)
        odd = torch.lerp(centre, padded.narrow(axis, 2, n), 0.25)
        v = torch.stack([even, odd], axis + 1).flatten(axis, axis + 1)
    return restore(v, axes)


# One axis of a x2 trilinear upsampling (align_corners=False) followed by a 3-tap conv, as
# taps on the low-resolution input: [phase][coarse tap -1, 0, +1][fine tap -1, 0, +1]. Fine
# sample 2i is 0.25 x[i-1] + 0.75 x[i], fine 2i+1 is 0.75 x[i] + 0.25 x[i+1].
_PHASE_TAPS = {1: ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)),
               2: (((0.75, 0.25, 0.0), (0.25, 0.75, 0.75), (0.0, 0.0, 0.25)),
                   ((0.25, 0.0, 0.0), (0.75, 0.75, 0.25), (0.0, 0.25, 0.75)))}


def _phase_kernel(weight: torch.Tensor, factors: Sequence[int]) -> torch.Tensor:
    """(O, C, 3, 3, 3) fine-grid kernel -> (phases * O, C, 3, 3, 3) coarse-grid kernels, one
    per output phase, phase-major (z, y, x phases vary fastest last), so that in either layout
    each phase's O channels stay together for the interleave."""
    taps = [torch.tensor(_PHASE_TAPS[f], dtype=weight.dtype, device=weight.device).view(f, 3, 3) for f in factors]
    k = torch.einsum("pat,qbu,rdv,octuv->pqrocabd", *taps, weight)
    return k.reshape(-1, weight.shape[1], 3, 3, 3)


def upsample_conv3d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                    factors: Sequence[int]) -> torch.Tensor:
    """conv3d(trilinear(x, factors), weight, bias, padding=1), equal to float rounding, but run at
    x's resolution: one conv with a kernel per output phase, interleaved after.

    Why: the upsampled tensor (input channels at the output resolution) is neither made nor
    kept for backward, and interpolation's slow backward disappears. Inside, the phase kernels
    equal the upsampling followed by the conv with x replicate-padded (interpolation clamps at
    the border); only the conv's zero padding at the outermost output planes differs from
    that, so those planes are computed the plain way from a two-plane slab.
    """
    phases = list(factors)
    n_phases = phases[0] * phases[1] * phases[2]
    b, _, *size = x.shape
    out_ch = weight.shape[0]
    pad: list[int] = []
    for f in reversed(phases):
        pad += [1, 1] if f == 2 else [0, 0]
    y = F.conv3d(F.pad(x, pad, mode="replicate"), _phase_kernel(weight, phases),
                 None if bias is None else bias.repeat(n_phases),
                 padding=tuple(1 if f == 1 else 0 for f in phases))
    fine = [n * f for n, f in zip(size, phases)]
    if is_channels_last(y):  # (b, D, H, W, pz, py, px, O) in memory -> (b, D, pz, H, py, W, px, O)
        v = y.permute(0, 2, 3, 4, 1).reshape(b, *size, *phases, out_ch).permute(0, 1, 4, 2, 5, 3, 6, 7)
        y = v.reshape(b, *fine, out_ch).permute(0, 4, 1, 2, 3)
    else:  # (b, pz, py, px, O, D, H, W) -> (b, O, D, pz, H, py, W, px)
        y = y.view(b, *phases, out_ch, *size).permute(0, 4, 5, 1, 6, 2, 7, 3).reshape(b, out_ch, *fine)
    for axis, f in enumerate(phases):
        if f == 2:
            for last in (False, True):
                y.narrow(axis + 2, y.shape[axis + 2] - 1 if last else 0, 1).copy_(
                    _border_plane(x, weight, bias, phases, axis, last))
    return y


def _border_plane(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, factors: Sequence[int],
                  axis: int, last: bool) -> torch.Tensor:
    """The first (or last) output plane along `axis` the plain way: upsample the two coarse
    planes at that end (the other axes whole), keep the two fine planes at the end, add the
    conv's zero plane, and run the conv on them."""
    dim = axis + 2
    take = min(2, x.shape[dim])
    slab = x.narrow(dim, x.shape[dim] - take if last else 0, take)
    u = upsample_x2(slab, factors)  # F.interpolate's values; its kernel is slow, in bf16 more so
    u = u.narrow(dim, u.shape[dim] - 2 if last else 0, 2)
    zero = [0, 0] * 3
    zero[2 * (4 - dim) + (1 if last else 0)] = 1  # F.pad lists the last axis first
    return F.conv3d(F.pad(u, zero), weight, bias, padding=tuple(0 if a == axis else 1 for a in range(3)))
