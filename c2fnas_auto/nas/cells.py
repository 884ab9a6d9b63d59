"""The two cell styles: residual (`Cell`) and the public C2FNAS wiring (`WiredCell`)."""

from __future__ import annotations

import torch
from torch import nn

from c2fnas_auto.nas.execution import Compilable
from c2fnas_auto.nas.ops import ConvBlock, Upsample, make_op
from c2fnas_auto.nas.plan import CellPlan, WiredCellPlan


class Cell(Compilable):
    """Residual style: `h = transition(x) (+ skip)`, `out = h + op(h)`.

    `ops` holds every candidate operation of the cell: one in a plain network, three in
    the supernet; module names are the same in both so weights transfer by name.
    """

    def __init__(self, plan: CellPlan):
        super().__init__()
        self.plan = plan
        self.upsample = Upsample(plan.upsample) if plan.upsample is not None else None
        self.transition = ConvBlock(plan.transition) if plan.transition is not None else None
        self.ops = nn.ModuleDict({name: make_op(units) for name, units in plan.ops})
        self.ds_head = ConvBlock(plan.ds_head) if plan.ds_head is not None else None

    def _forward_impl(self, x: torch.Tensor, skip: torch.Tensor | None, op: str) -> torch.Tensor:
        if self.upsample is not None:
            x = self.upsample(x)
        if self.transition is not None:
            x = self.transition(x)
        if skip is not None:
            x = x + skip
        return x + self.ops[op](x)


class WiredCell(Compilable):
    """c2fnas style: `out = post(op(pre(down(main)) [+ second(other)]))`, no residual.

    As `Cell`, `ops` holds one or all three candidates under the same names.
    """

    def __init__(self, plan: WiredCellPlan):
        super().__init__()
        self.plan = plan
        self.down = ConvBlock(plan.down) if plan.down is not None else None
        self.pre = ConvBlock(plan.pre)
        self.second = ConvBlock(plan.second) if plan.second is not None else None
        # the op's input (pre's output, plus second's) is read by the op alone
        self.ops = nn.ModuleDict({name: make_op(units, own_input=True) for name, units in plan.ops})
        self.post = ConvBlock(plan.post)
        self.ds_head = ConvBlock(plan.ds_head) if plan.ds_head is not None else None

    def _forward_impl(self, main: torch.Tensor, other: torch.Tensor | None, op: str) -> torch.Tensor:
        if self.down is not None:
            main = self.down(main)
        h = self.pre(main)
        if self.second is not None:
            h = h + self.second(other)
        return self.post(self.ops[op](h))
