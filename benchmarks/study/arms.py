"""The genotypes the study trains ("arms"): the searched one, the shipped reference, the
searched topology with every cell `3d` (what the fine stage adds), N random valid ones,
and, when the network has cell styles, the searched and reference ones in the other style."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from c2fnas_auto.nas.genotype import OPS, Genotype, reference_genotype
from c2fnas_auto.nas.topology import enumerate_topologies

DEFAULT_STYLE = "default"


@dataclass(frozen=True)
class Arm:
    name: str
    genotype: Genotype
    cell_style: str = DEFAULT_STYLE  # NetworkConfig.cell_style, or "default" (the plans' own)

    @property
    def kind(self) -> str:
        return "random" if self.name.startswith("random_") else self.name.split("@")[0]


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


def cell_styles() -> tuple[str, tuple[str, ...]] | None:
    """(default style, every style) when NetworkConfig has `cell_style`, else None."""
    from c2fnas_auto.nas.config import NetworkConfig

    field = {f.name: f for f in fields(NetworkConfig)}.get("cell_style")
    if field is None:
        return None
    styles = ("c2fnas", "residual")
    return str(field.default), tuple(s for s in styles)


def build_arms(searched: Genotype, num_random: int, random_seed: int) -> list[Arm]:
    arms = [Arm("searched", searched), Arm("reference", reference_genotype()),
            Arm("searched_3d", searched.with_ops(["3d"] * len(searched.levels)))]
    arms += [Arm(f"random_{i}", g) for i, g in enumerate(random_genotypes(num_random, random_seed))]
    styles = cell_styles()
    if styles is not None:
        default, every = styles
        for other in (s for s in every if s != default):
            arms += [Arm(f"searched@{other}", searched, other), Arm(f"reference@{other}", reference_genotype(), other)]
    return arms


def network_config(plans, arm: Arm):
    """The plans' NetworkConfig, with the arm's cell style when it names one."""
    import dataclasses

    cfg = plans.network_config()
    if arm.cell_style != DEFAULT_STYLE:
        cfg = dataclasses.replace(cfg, cell_style=arm.cell_style)
    return cfg
