"""The layer plan: one description of a network that both PyTorch and the cost model read.

`make_plan` turns a topology, the candidate operations of each cell and a
NetworkConfig into plain dataclasses (conv units, upsampling factors, skips, heads).
`network.py` builds modules from it and `cost.py` counts parameters, FLOPs and saved
activations from it, so the two can never disagree about what the network is.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence, cast

from c2fnas_auto.errors import GenotypeError
from c2fnas_auto.nas.config import NetworkConfig
from c2fnas_auto.nas.genotype import OPS, check_levels

Triple = tuple[int, int, int]


Scale = tuple[float, float, float]


@dataclass(frozen=True)
class ConvUnit:
    """Pre-activation block: [upsample] -> [ReLU] -> [upsample] -> Conv3d -> [InstanceNorm3d].

    `upsample` (trilinear, exact per-axis factor) runs before the ReLU when
    `upsample_first`, else between the ReLU and the conv; the two orders differ and
    autograd saves different tensors for them (see cost.py).
    """

    in_channels: int
    out_channels: int
    kernel: Triple
    stride: Triple = (1, 1, 1)
    relu: bool = True
    norm: bool = True
    bias: bool = False
    affine: bool = True
    upsample: Scale | None = None
    upsample_first: bool = True

    @property
    def padding(self) -> Triple:
        return tuple(k // 2 for k in self.kernel)  # type: ignore[return-value]

    @property
    def fused_upsample(self) -> bool:
        """ReLU -> trilinear by 1 or 2 per axis (2 at least once) -> 3x3x3 conv, stride 1 (the wired
        head's expand): run as one conv at the low resolution (ops.upsample_conv3d)."""
        return (self.upsample is not None and not self.upsample_first and self.kernel == (3, 3, 3)
                and self.stride == (1, 1, 1) and set(self.upsample) <= {1.0, 2.0} and 2.0 in self.upsample)

    @property
    def upsample_factors(self) -> Triple:
        return tuple(int(round(f)) for f in (self.upsample or (1.0, 1.0, 1.0)))  # type: ignore[return-value]


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


def wired_op_units(op: str, channels: int, through_plane_axis: int) -> tuple[ConvUnit, ...]:
    """The c2fnas style's op: ReLU -> conv(s) -> InstanceNorm, one ReLU and one norm even for p3d."""
    units = op_units(op, channels, through_plane_axis)
    if len(units) == 1:
        return units
    first, second = units
    return (replace(first, norm=False), replace(second, relu=False))


class _HasOps:
    ops: tuple[tuple[str, tuple[ConvUnit, ...]], ...]
    index: int

    def op_units(self, op: str) -> tuple[ConvUnit, ...]:
        for name, units in self.ops:
            if name == op:
                return units
        raise GenotypeError(f"cell {self.index + 1} has no op {op!r} (has {', '.join(n for n, _ in self.ops)})")


@dataclass(frozen=True)
class CellPlan(_HasOps):
    """Residual style: transition to its level (+ skip), then `out = h + op(h)`."""

    index: int
    level: int
    prev_level: int
    channels: int
    upsample: tuple[float, float, float] | None  # trilinear factor applied before `transition`
    transition: ConvUnit | None                  # None when level and width are unchanged
    skip_from: int | None                        # encoder cell whose output is added after the transition
    ops: tuple[tuple[str, tuple[ConvUnit, ...]], ...]  # candidate operations (one for a plain network)
    ds_head: ConvUnit | None                     # deep-supervision 1x1x1 head on this cell's output


@dataclass(frozen=True)
class WiredCellPlan(_HasOps):
    """c2fnas style: `out = post(op(pre(down(main)) [+ second(other)]))`, no residual.

    Sources are tensor numbers: 0 is the stem's output, k the output of cell k (1-based),
    so "the stem counts as cell 0" as in the public re-implementation.
    """

    index: int
    level: int
    channels: int
    main_from: int                 # the previous cell, or after an up step the level's encoder skip
    down: ConvUnit | None          # ReLU -> 3x3x3 stride conv -> IN when the cell is one level deeper
    pre: ConvUnit                  # 1x1x1 conv in
    second_from: int | None        # the cell before the previous one (same level) or the previous (up step)
    second: ConvUnit | None        # 1x1x1 conv, or upsample -> ReLU -> 1x1x1 conv -> IN (not affine)
    ops: tuple[tuple[str, tuple[ConvUnit, ...]], ...]
    post: ConvUnit                 # 1x1x1 conv out
    ds_head: ConvUnit | None


@dataclass(frozen=True)
class HeadPlan:
    """Residual style: level-1 features -> full resolution -> classes, plus the stem's full-res features."""

    reduce: ConvUnit                      # 1x1x1, level-1 width -> stem width, at level 1
    upsample: tuple[float, float, float] | None  # inverse of strides[0]
    classifier: ConvUnit                  # ReLU -> 1x1x1 conv with bias to the classes


@dataclass(frozen=True)
class WiredHeadPlan:
    """c2fnas style: concatenate two level-1 tensors -> 3x3x3 -> up -> 3x3x3 -> 1x1x1 to the classes."""

    concat_from: tuple[int, int]  # tensor numbers, the last cell second
    fuse: ConvUnit                # ReLU -> 3x3x3 (2 x level-1 width -> level-1 width) -> IN
    expand: ConvUnit              # ReLU -> trilinear by strides[0] -> 3x3x3 (-> stem width) -> IN
    classifier: ConvUnit          # 1x1x1 conv with bias ("linear") or ReLU -> 1x1x1 conv without ("relu")


@dataclass(frozen=True)
class NetworkPlan:
    levels: tuple[int, ...]
    config: NetworkConfig
    stem: tuple[ConvUnit, ConvUnit]
    cells: tuple[CellPlan, ...] | tuple[WiredCellPlan, ...]
    head: HeadPlan | WiredHeadPlan
    ds_cells: tuple[int, ...]  # cells with a deep-supervision head, finest level first

    @property
    def style(self) -> str:
        return self.config.cell_style

    def ds_levels(self) -> tuple[int, ...]:
        return tuple(self.cells[i].level for i in self.ds_cells)

    def residual(self) -> tuple[tuple[CellPlan, ...], HeadPlan]:
        """Cells and head typed for the residual style, so code for one style needs no checks
        per cell: `make_plan` pairs a `HeadPlan` with `CellPlan`s only."""
        assert isinstance(self.head, HeadPlan), "not a residual-style plan"
        return cast("tuple[CellPlan, ...]", self.cells), self.head

    def wired(self) -> tuple[tuple[WiredCellPlan, ...], WiredHeadPlan]:
        """Cells and head typed for the c2fnas style: `make_plan` pairs a `WiredHeadPlan` with
        `WiredCellPlan`s only."""
        assert isinstance(self.head, WiredHeadPlan), "not a c2fnas-style plan"
        return cast("tuple[WiredCellPlan, ...]", self.cells), self.head


def _scale(stride: Triple) -> Scale | None:
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
    ds_cells = _ds_cells(levels) if config.deep_supervision else ()
    if config.cell_style == "residual":
        return _residual_plan(levels, cell_ops, config, ds_cells)
    return _wired_plan(levels, cell_ops, config, ds_cells)


def _last_encoder_on(levels: tuple[int, ...]) -> dict[int, int]:
    """Level -> index of the last encoder cell there (cells up to the first on the deepest level)."""
    out: dict[int, int] = {}
    for i in range(levels.index(max(levels)) + 1):
        out[levels[i]] = i
    return out


def _ds_cells(levels: tuple[int, ...]) -> tuple[int, ...]:
    """Deep supervision: the last decoder cell on each level above the deepest, finest first."""
    deepest = levels.index(max(levels))
    out = []
    for lv in range(1, max(levels)):
        on_level = [i for i in range(deepest + 1, len(levels)) if levels[i] == lv]
        if on_level:
            out.append(on_level[-1])
    return tuple(out)


def _ds_head(config: NetworkConfig, channels: int) -> ConvUnit:
    return ConvUnit(channels, config.num_classes, (1, 1, 1), norm=False, bias=True)


def _residual_plan(levels: tuple[int, ...], cell_ops: Sequence[Sequence[str]], config: NetworkConfig,
                   ds_cells: tuple[int, ...]) -> NetworkPlan:
    ch = config.level_channels
    axis = config.through_plane_axis
    stem = (ConvUnit(config.in_channels, config.stem_channels, (3, 3, 3), relu=False),
            ConvUnit(config.stem_channels, config.stem_channels, (3, 3, 3), stride=config.strides[0]))
    last_encoder_on = _last_encoder_on(levels)
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
        ds_head = _ds_head(config, c) if i in ds_cells else None
        cells.append(CellPlan(i, lv, prev_level, c, upsample, transition, skip, ops, ds_head))
        prev_level, prev_ch = lv, c
    head = HeadPlan(reduce=ConvUnit(ch[0], config.stem_channels, (1, 1, 1)),
                    upsample=_scale(config.strides[0]),
                    classifier=ConvUnit(config.stem_channels, config.num_classes, (1, 1, 1), norm=False, bias=True))
    return NetworkPlan(levels, config, stem, tuple(cells), head, ds_cells)


def _wired_plan(levels: tuple[int, ...], cell_ops: Sequence[Sequence[str]], config: NetworkConfig,
                ds_cells: tuple[int, ...]) -> NetworkPlan:
    """The public C2FNASNet's wiring, generalised from its one genotype to every valid one."""
    ch = config.level_channels
    axis = config.through_plane_axis
    stem = (ConvUnit(config.in_channels, config.stem_channels, (3, 3, 3), relu=False),
            ConvUnit(config.stem_channels, ch[0], (3, 3, 3), stride=config.strides[0]))
    last_encoder_on = _last_encoder_on(levels)
    tensor_level = (1,) + levels  # tensor k: 0 = stem, k = cell k (1-based)
    cells = []
    for i, lv in enumerate(levels):
        c = ch[lv - 1]
        prev = tensor_level[i]
        main_from, down, second_from, second = i, None, None, None
        if lv > prev:
            down = ConvUnit(ch[prev - 1], c, (3, 3, 3), stride=config.strides[prev])
        elif lv < prev:
            # the level's encoder skip is the main input; the stem stands in on level 1
            main_from = last_encoder_on[lv] + 1 if lv in last_encoder_on else 0
            second_from = i
            second = ConvUnit(ch[prev - 1], c, (1, 1, 1), affine=False, upsample=_scale(config.strides[lv]))
        elif i >= 1 and tensor_level[i - 1] == lv:
            second_from = i - 1
            second = ConvUnit(c, c, (1, 1, 1), relu=False, norm=False)
        plain = ConvUnit(c, c, (1, 1, 1), relu=False, norm=False)
        ops = tuple((op, wired_op_units(op, c, axis)) for op in cell_ops[i])
        ds_head = _ds_head(config, c) if i in ds_cells else None
        cells.append(WiredCellPlan(i, lv, c, main_from, down, plain, second_from, second, ops, plain, ds_head))
    n = len(levels)
    # the last two level-1 tensors: the previous cell, or (after an up step) the last cell's skip
    before_last = n - 1 if tensor_level[n - 1] == 1 else cells[-1].main_from
    head = WiredHeadPlan(concat_from=(before_last, n),
                         fuse=ConvUnit(2 * ch[0], ch[0], (3, 3, 3)),
                         expand=ConvUnit(ch[0], config.stem_channels, (3, 3, 3), upsample=_scale(config.strides[0]),
                                         upsample_first=False),
                         classifier=ConvUnit(config.stem_channels, config.num_classes, (1, 1, 1), norm=False,
                                             relu=config.classifier == "relu", bias=config.classifier == "linear"))
    return NetworkPlan(levels, config, stem, tuple(cells), head, ds_cells)
