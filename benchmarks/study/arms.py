"""The networks the study trains ("arms"): the searched genotype, the shipped reference, the
searched topology with every cell `3d` (what the fine stage adds), N random valid ones,
all in the plans' cell style, the searched and reference ones in the other style, and
(profiles with `nnunet_arm`) nnU-Net v2's own network (benchmarks/study/nnunet_arm.py)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from c2fnas_auto.nas.genotype import OPS, Genotype, reference_genotype
from c2fnas_auto.nas.topology import enumerate_topologies


@dataclass(frozen=True)
class Arm:
    name: str
    genotype: Genotype | None  # None: nnU-Net's network, planned per task
    cell_style: str  # NetworkConfig.cell_style ("nnunet" for nnU-Net's network)
    width_multiplier: float | None = None  # the budget study: widths scaled to the budget (None: the plans')

    @property
    def kind(self) -> str:
        return "random" if self.name.startswith("random_") else self.name.split("@")[0]

    @property
    def network_id(self) -> str:
        """Names the network in result keys: the genotype's id, or "nnunet" (its per-task plan
        is in the results' meta)."""
        base = self.genotype.short_id() if self.genotype is not None else self.cell_style
        return base if self.width_multiplier is None else f"{base}w{self.width_multiplier:.4f}"


def random_genotypes(n: int, seed: int = 0) -> list[Genotype]:
    """Uniform over the valid topologies, each cell's op uniform over OPS (seeded)."""
    rng = np.random.default_rng(seed)
    topologies = enumerate_topologies()
    out = []
    for _ in range(n):
        levels = list(topologies[int(rng.integers(len(topologies)))])
        ops = [OPS[int(rng.integers(len(OPS)))] for _ in levels]
        out.append(Genotype(levels=levels, ops=ops).validate())
    return out


def build_arms(searched: Genotype, num_random: int, random_seed: int, main_style: str,
               nnunet: bool = False) -> list[Arm]:
    """Every arm in `main_style` (the plans' own cell style), plus the searched and the
    reference genotype in each other style (the cell-style comparison at equal budget)."""
    from c2fnas_auto.nas.config import CELL_STYLES

    arms = [Arm("searched", searched, main_style), Arm("reference", reference_genotype(), main_style),
            Arm("searched_3d", searched.with_ops(["3d"] * len(searched.levels)), main_style)]
    arms += [Arm(f"random_{i}", g, main_style) for i, g in enumerate(random_genotypes(num_random, random_seed))]
    for other in (s for s in CELL_STYLES if s != main_style):
        arms += [Arm(f"searched@{other}", searched, other), Arm(f"reference@{other}", reference_genotype(), other)]
    if nnunet:
        from benchmarks.study.nnunet_arm import ARM_NAME, CELL_STYLE

        arms.append(Arm(ARM_NAME, None, CELL_STYLE))
    return arms


def network_config(plans, arm: Arm):
    """The plans' NetworkConfig in the arm's cell style, at the arm's widths."""
    import dataclasses

    from c2fnas_auto.nas.budget import scale_widths

    config = dataclasses.replace(plans.network_config(), cell_style=arm.cell_style)
    return config if arm.width_multiplier is None else scale_widths(config, arm.width_multiplier)
