"""The layer plan: one description of a network that both PyTorch and the cost model read.

`make_plan` turns a topology, the candidate operations of each cell and a
NetworkConfig into plain dataclasses (conv units, upsampling factors, skips, heads).
`network.py` builds modules from it and `cost.py` counts parameters, FLOPs and saved
activations from it, so the two can never disagree about what the network is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from c2fnas_auto.errors import GenotypeError
from c2fnas_auto.nas.config import NetworkConfig
from c2fnas_auto.nas.genotype import OPS, check_levels

Triple = tuple[int, int, int]


@dataclass(frozen=True)
class ConvUnit:
    """Pre-activation block: [ReLU] -> Conv3d -> [InstanceNorm3d(affine)]."""

    in_channels: int
    out_channels: int
    kernel: Triple
    stride: Triple = (1, 1, 1)
    relu: bool = True
    norm: bool = True
    bias: bool = False

    @property
    def padding(self) -> Triple:
        return tuple(k // 2 for k in self.kernel)  # type: ignore[return-value]


def kernel_2d(axis: int) -> Triple:
    """3x3 in-plane, 1 through-plane."""
    k = [3, 3, 3]
    k[axis] = 1
    return tuple(k)  # type: ignore[return-value]


def kernel_1d(axis: int) -> Triple:
    """3 through-plane only: the second half of a pseudo-3D op."""
    k = [1, 1, 1]
    k[axis] = 3
    return tuple(k)  # type: ignore[return-value]


def op_units(op: str, channels: int, through_plane_axis: int) -> tuple[ConvUnit, ...]:
    """The conv units of one cell operation at constant width."""
    if op == "2d":
        return (ConvUnit(channels, channels, kernel_2d(through_plane_axis)),)
    if op == "3d":
        return (ConvUnit(channels, channels, (3, 3, 3)),)
    if op == "p3d":
        return (ConvUnit(channels, channels, kernel_2d(through_plane_axis)),
                ConvUnit(channels, channels, kernel_1d(through_plane_axis)))
    raise GenotypeError(f"unknown op {op!r}, expected one of {', '.join(OPS)}")


@dataclass(frozen=True)
class CellPlan:
    """One cell: transition to its level (+ skip), then `out = h + op(h)`."""

    index: int
    level: int
    prev_level: int
    channels: int
    upsample: tuple[float, float, float] | None  # trilinear factor applied before `transition`
    transition: ConvUnit | None                  # None when level and width are unchanged
    skip_from: int | None                        # encoder cell whose output is added after the transition
    ops: tuple[tuple[str, tuple[ConvUnit, ...]], ...]  # candidate operations (one for a plain network)
    ds_head: ConvUnit | None                     # deep-supervision 1x1x1 head on this cell's output

    def op_units(self, op: str) -> tuple[ConvUnit, ...]:
        for name, units in self.ops:
            if name == op:
                return units
        raise GenotypeError(f"cell {self.index + 1} has no op {op!r} (has {', '.join(n for n, _ in self.ops)})")


@dataclass(frozen=True)
class HeadPlan:
    """Level-1 features -> full resolution -> classes, with the stem's full-res features added."""

    reduce: ConvUnit                      # 1x1x1, level-1 width -> stem width, at level 1
    upsample: tuple[float, float, float] | None  # inverse of strides[0]
    classifier: ConvUnit                  # ReLU -> 1x1x1 conv with bias to the classes


@dataclass(frozen=True)
class NetworkPlan:
    levels: tuple[int, ...]
    config: NetworkConfig
    stem: tuple[ConvUnit, ConvUnit]
    cells: tuple[CellPlan, ...]
    head: HeadPlan
    ds_cells: tuple[int, ...]  # cells with a deep-supervision head, finest level first

    def ds_levels(self) -> tuple[int, ...]:
        return tuple(self.cells[i].level for i in self.ds_cells)


def _scale(stride: Triple) -> tuple[float, float, float] | None:
    if all(s == 1 for s in stride):
        return None
    return tuple(float(s) for s in stride)  # type: ignore[return-value]


def make_plan(levels: Sequence[int], cell_ops: Sequence[Sequence[str]], config: NetworkConfig) -> NetworkPlan:
    """Describe the network for a topology; `cell_ops[i]` are the candidate ops of cell i."""
    levels = tuple(levels)
    if config.num_levels < max(levels):
        raise GenotypeError(f"the genotype uses level {max(levels)} but the network config has only "
                            f"{config.num_levels} levels")
    check_levels(levels, config.num_levels, len(levels))
    if len(cell_ops) != len(levels):
        raise GenotypeError(f"{len(cell_ops)} op choices for {len(levels)} cells")
    ch = config.level_channels
    axis = config.through_plane_axis
    stem = (ConvUnit(config.in_channels, config.stem_channels, (3, 3, 3), relu=False),
            ConvUnit(config.stem_channels, config.stem_channels, (3, 3, 3), stride=config.strides[0]))
    deepest = levels.index(max(levels))
    last_encoder_on: dict[int, int] = {}
    for i in range(deepest + 1):
        last_encoder_on[levels[i]] = i
    # deep supervision: the last decoder cell on each level above the deepest
    ds_cells: list[int] = []
    if config.deep_supervision:
        for lv in range(1, max(levels)):
            on_level = [i for i in range(deepest + 1, len(levels)) if levels[i] == lv]
            if on_level:
                ds_cells.append(on_level[-1])
    cells = []
    prev_level, prev_ch = 1, config.stem_channels
    for i, lv in enumerate(levels):
        c = ch[lv - 1]
        upsample, transition, skip = None, None, None
        if lv > prev_level:
            transition = ConvUnit(prev_ch, c, (3, 3, 3), stride=config.strides[prev_level])
        elif lv < prev_level:
            upsample = _scale(config.strides[lv])
            transition = ConvUnit(prev_ch, c, (1, 1, 1))
            skip = last_encoder_on.get(lv)
        elif prev_ch != c:
            transition = ConvUnit(prev_ch, c, (1, 1, 1))
        ops = tuple((op, op_units(op, c, axis)) for op in cell_ops[i])
        ds_head = ConvUnit(c, config.num_classes, (1, 1, 1), norm=False, bias=True) if i in ds_cells else None
        cells.append(CellPlan(i, lv, prev_level, c, upsample, transition, skip, ops, ds_head))
        prev_level, prev_ch = lv, c
    head = HeadPlan(reduce=ConvUnit(ch[0], config.stem_channels, (1, 1, 1)),
                    upsample=_scale(config.strides[0]),
                    classifier=ConvUnit(config.stem_channels, config.num_classes, (1, 1, 1), norm=False, bias=True))
    return NetworkPlan(levels, config, stem, tuple(cells), head, tuple(ds_cells))
