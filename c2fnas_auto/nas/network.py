"""The network a genotype describes (and the shared body of the supernet)."""

from __future__ import annotations

from typing import Sequence, cast

import torch
from torch import nn

from c2fnas_auto.nas.cells import Cell, WiredCell
from c2fnas_auto.nas.config import NetworkConfig, NetworkConfigError
from c2fnas_auto.nas.execution import Compilable
from c2fnas_auto.nas.genotype import Genotype
from c2fnas_auto.nas.ops import ConvBlock, Upsample
from c2fnas_auto.nas.plan import NetworkPlan, WiredHeadPlan, make_plan


class CellNetwork(Compilable):
    """Stem -> cells -> head, built from a NetworkPlan; `run(x, ops)` picks each cell's op.

    The plan's cell style (config.cell_style) picks the wiring: "c2fnas" (WiredCell, concat
    head) or "residual" (Cell, stem-skip head). Outputs: one logits tensor (B, K, z, y, x);
    in training mode with deep supervision a list, full resolution first, then one output
    per decoder level (finest first).
    """

    def __init__(self, plan: NetworkPlan):
        super().__init__()
        self.plan = plan
        self.config = plan.config
        self.stem = nn.ModuleList([ConvBlock(plan.stem[0]), ConvBlock(plan.stem[1])])
        if isinstance(plan.head, WiredHeadPlan):
            wired_cells, wired_head = plan.wired()
            self.cells = nn.ModuleList([WiredCell(c) for c in wired_cells])
            # the head's tensors are each read by the next block only: its ReLUs run in place
            self.head_fuse = ConvBlock(wired_head.fuse, inplace_relu=True)
            self.head_expand = ConvBlock(wired_head.expand, inplace_relu=True)
            self.head_classifier = ConvBlock(wired_head.classifier, inplace_relu=True)
            # tensor number -> index of the last cell that reads it (len(cells): the head), so
            # inference can drop a tensor once it is read for the last time
            self._last_read: dict[int, int] = {}
            for c in wired_cells:
                for k in (c.main_from, c.second_from):
                    if k is not None:
                        self._last_read[k] = c.index
            for k in wired_head.concat_from:
                self._last_read[k] = len(wired_cells)
        else:
            cells, head = plan.residual()
            self.cells = nn.ModuleList([Cell(c) for c in cells])
            self.head_reduce = ConvBlock(head.reduce)
            self.head_upsample = Upsample(head.upsample) if head.upsample is not None else None
            self.head_classifier = ConvBlock(head.classifier, inplace_relu=True)  # reads y + full, fresh
            self._skip_sources = {c.skip_from for c in cells if c.skip_from is not None}

    def deep_supervision_scales(self) -> list[tuple[float, float, float]]:
        """Per-axis scale of each output relative to the input, in output order."""
        scales = [(1.0, 1.0, 1.0)]
        for lv in self.plan.ds_levels():
            f = self.config.level_downsampling(lv)
            scales.append(tuple(1.0 / d for d in f))  # type: ignore[arg-type]
        return scales

    def check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 5:
            raise NetworkConfigError(f"the network expects (B, C, z, y, x) input, got shape {tuple(x.shape)}")
        if x.shape[1] != self.config.in_channels:
            raise NetworkConfigError(f"the network expects {self.config.in_channels} input channel(s), "
                                     f"got {x.shape[1]}")
        self.config.check_patch(x.shape[2:], deepest_level=max(self.plan.levels))

    def run(self, x: torch.Tensor, ops: Sequence[str]) -> torch.Tensor | list[torch.Tensor]:
        self.check_input(x)
        want_ds = self.training and self.config.deep_supervision
        if isinstance(self.plan.head, WiredHeadPlan):
            logits, ds_outputs = self._run_wired(x, ops, want_ds)
        else:
            logits, ds_outputs = self._run_residual(x, ops, want_ds)
        if want_ds:
            # cells run deep -> shallow in the decoder; outputs go finest first
            return [logits] + ds_outputs[::-1]
        return logits

    def _run_wired(self, x: torch.Tensor, ops: Sequence[str],
                   want_ds: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        h = self.stem[1](self.stem[0](x))
        kept: dict[int, torch.Tensor] = {0: h}  # tensor number -> tensor (0 = stem, k = cell k)
        ds_outputs: list[torch.Tensor] = []
        for i, cell in enumerate(cast("list[WiredCell]", self.cells)):  # built so in __init__
            p = cell.plan
            other = kept[p.second_from] if p.second_from is not None else None
            h = cell(kept[p.main_from], other, ops[i])
            kept = {k: v for k, v in kept.items() if self._last_read.get(k, -1) > i}
            kept[i + 1] = h
            if want_ds and cell.ds_head is not None:
                ds_outputs.append(cell.ds_head(h))
        a, b = self.plan.wired()[1].concat_from
        y = self.head_expand(self.head_fuse(torch.cat([kept[a], kept[b]], dim=1)))
        return self._classify(y), ds_outputs

    def _run_residual(self, x: torch.Tensor, ops: Sequence[str],
                      want_ds: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        full = self.stem[0](x)
        h = self.stem[1](full)
        saved: dict[int, torch.Tensor] = {}
        ds_outputs: list[torch.Tensor] = []
        for i, cell in enumerate(cast("list[Cell]", self.cells)):  # built so in __init__
            skip = saved[cell.plan.skip_from] if cell.plan.skip_from is not None else None
            h = cell(h, skip, ops[i])
            if i in self._skip_sources:
                saved[i] = h
            if want_ds and cell.ds_head is not None:
                ds_outputs.append(cell.ds_head(h))
        y = self.head_reduce(h)
        if self.head_upsample is not None:
            y = self.head_upsample(y)
        return self._classify(y + full), ds_outputs

    @torch.compiler.disable
    def _classify(self, y: torch.Tensor) -> torch.Tensor:
        """The classifier outside any compiled graph, so hooks on `head_classifier` (the
        training's dead-head probe) run on every call, also when installed after compiling."""
        return self.head_classifier(y)


class C2FNASNet(CellNetwork):
    """A plain network: one fixed operation per cell."""

    def __init__(self, genotype: Genotype, config: NetworkConfig):
        genotype.validate()
        super().__init__(make_plan(genotype.levels, [[op] for op in genotype.ops], config))
        self.genotype = genotype

    def _forward_impl(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        return self.run(x, self.genotype.ops)


def build_network(genotype: Genotype, config: NetworkConfig) -> C2FNASNet:
    """The deployable network for `genotype` with the widths and strides of `config`."""
    return C2FNASNet(genotype, config)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
