"""PyTorch modules for the conv units and cell operations of the layer plan."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from c2fnas_auto.nas.plan import ConvUnit


class ConvBlock(nn.Module):
    """[upsample] -> [ReLU] -> [upsample] -> Conv3d -> [InstanceNorm3d], as a ConvUnit says.

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
        self.norm = nn.InstanceNorm3d(unit.out_channels, affine=unit.affine) if unit.norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.upsample is not None and self.unit.upsample_first:
            x = self.upsample(x)
        if self.relu is not None:
            x = self.relu(x)
        if self.upsample is not None and not self.unit.upsample_first:
            x = self.upsample(x)
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        return x


def make_op(units: Sequence[ConvUnit], own_input: bool = False) -> nn.Sequential:
    """A cell operation: its conv units in sequence (one for 2d/3d, two for p3d).

    `own_input`: nothing else reads the op's input, so its first ReLU may run in place.
    A later unit's input is the previous unit's fresh output (its ReLU may always be in place).
    """
    return nn.Sequential(*(ConvBlock(u, inplace_relu=own_input or i > 0) for i, u in enumerate(units)))


class Upsample(nn.Module):
    """Trilinear upsampling by an exact per-axis factor (the inverse of a stride)."""

    def __init__(self, scale: tuple[float, float, float]):
        super().__init__()
        self.scale = tuple(float(s) for s in scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = [int(round(n * s)) for n, s in zip(x.shape[2:], self.scale)]
        return nn.functional.interpolate(x, size=size, mode="trilinear", align_corners=False)
