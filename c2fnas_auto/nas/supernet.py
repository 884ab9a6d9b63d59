"""The fine stage's single-path supernet: every cell holds all three operations.

A forward pass runs one operation per cell, so a training step costs the memory of
one path; `extract` returns the plain network of any path with the shared weights.
Module names match `build_network`'s, so weights move by name.
"""

from __future__ import annotations

import random
from typing import Callable, Sequence

import torch

from c2fnas_auto.errors import GenotypeError
from c2fnas_auto.nas.config import NetworkConfig
from c2fnas_auto.nas.genotype import OPS, Genotype, check_ops
from c2fnas_auto.nas.network import C2FNASNet, CellNetwork, build_network
from c2fnas_auto.nas.plan import make_plan


class Supernet(CellNetwork):
    """All candidate operations in every cell of one topology."""

    def __init__(self, levels: Sequence[int], config: NetworkConfig):
        levels = list(levels)
        super().__init__(make_plan(levels, [list(OPS)] * len(levels), config))
        self.levels = levels

    def _forward_impl(self, x: torch.Tensor, ops: Sequence[str]) -> torch.Tensor | list[torch.Tensor]:
        check_ops(ops, len(self.levels))
        return self.run(x, ops)

    def compile_units(self) -> list:
        """Each cell on its own: a cell's graph depends only on its own op (3 variants), while
        a whole-network graph would be recompiled for every sampled path."""
        return [(cell, f"supernet cell {i + 1}") for i, cell in enumerate(self.cells)]

    def genotype(self, ops: Sequence[str], provenance: dict | None = None) -> Genotype:
        return Genotype(list(self.levels), list(ops), num_levels=self.config.num_levels,
                        num_cells=len(self.levels), provenance=dict(provenance or {})).validate()

    def extract(self, ops: Sequence[str]) -> C2FNASNet:
        """A standalone network for path `ops` holding copies of the supernet's weights."""
        net = build_network(self.genotype(ops), self.config)
        own = self.state_dict()
        wanted = net.state_dict()
        missing = [k for k in wanted if k not in own]
        if missing:
            raise GenotypeError(f"supernet has no weights for {missing[0]} (and {len(missing) - 1} more)")
        net.load_state_dict({k: own[k].detach().clone() for k in wanted})
        net.train(self.training)
        return net.to(next(self.parameters()).device)

    def random_ops(self, rng: random.Random) -> list[str]:
        """One operation per cell, uniformly (the fine stage's path sampling)."""
        return [rng.choice(OPS) for _ in self.levels]

    def sampling_forward(self, seed: int = 0,
                         uniform_steps: int = 0) -> Callable[[torch.nn.Module, torch.Tensor], object]:
        """A `forward_fn(network, x)` for training.api that samples a new path per training call.

        The first `uniform_steps` training calls give every cell the same sampled op (three
        whole networks sharing weights); later calls draw one op per cell. Why: the c2fnas
        wiring has no residual, and trained cell-wise from scratch its supernet learned
        nothing in our probes (every path scored Dice 0 after 160 steps on the study's source
        task), while whole-network sampling first, then cell-wise, gave 0.63-0.69 on every
        path. Eval-mode calls (validation) draw a path too but do not count as steps.
        """
        rng = random.Random(seed)
        steps = [0]

        def forward_fn(network: torch.nn.Module, x: torch.Tensor) -> object:
            if network.training:
                steps[0] += 1
                if steps[0] <= uniform_steps:
                    return network(x, [rng.choice(OPS)] * len(self.levels))
            return network(x, self.random_ops(rng))

        return forward_fn


def build_supernet(levels: Sequence[int], config: NetworkConfig) -> Supernet:
    return Supernet(levels, config)
