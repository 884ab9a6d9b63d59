"""A cell: move to its level, add the encoder skip, apply its operation residually."""

from __future__ import annotations

import torch
from torch import nn

from c2fnas_auto.nas.ops import ConvBlock, Upsample, make_op
from c2fnas_auto.nas.plan import CellPlan


class Cell(nn.Module):
    """`h = transition(x) (+ skip)`, `out = h + op(h)`.

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

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None, op: str) -> torch.Tensor:
        if self.upsample is not None:
            x = self.upsample(x)
        if self.transition is not None:
            x = self.transition(x)
        if skip is not None:
            x = x + skip
        return x + self.ops[op](x)
