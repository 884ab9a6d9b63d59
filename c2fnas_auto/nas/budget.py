"""A cost budget for the search: which networks it may train, and widths scaled to fill it.

A budget caps parameters and/or forward GFLOPs (the cost model's prices, `cost.py`). With a
`band`, a network must also use at least `1 - band` of the budget: then every candidate
costs about the same and a win is the topology's, not a bigger network's. Where widths may
change, `solve_width_multiplier` finds the factor on every width (stem and levels) that
brings a genotype to the budget, so candidates are compared at equal cost.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Sequence

from c2fnas_auto.errors import C2FNASError
from c2fnas_auto.nas.config import NetworkConfig
from c2fnas_auto.nas.cost import CostEstimate, estimate_cost
from c2fnas_auto.nas.genotype import Genotype

MIN_WIDTH_MULTIPLIER = 1 / 16  # below this a level is a few channels wide: not a network worth training
MAX_WIDTH_MULTIPLIER = 16.0


class BudgetError(C2FNASError):
    """A budget value is out of range, or no width brings a network inside it."""


@dataclass(frozen=True)
class CostBudget:
    """Upper limits (None: no limit on that measure) and the share below them a network may stay."""

    max_params: int | None = None
    max_gflops: float | None = None
    band: float | None = None  # None: limits only; b: also at least (1 - b) x each limit

    def __post_init__(self) -> None:
        if self.max_params is not None and (isinstance(self.max_params, bool) or self.max_params < 1):
            raise BudgetError(f"--max-params {self.max_params}: must be a positive integer")
        if self.max_gflops is not None and not self.max_gflops > 0:
            raise BudgetError(f"--max-gflops {self.max_gflops}: must be positive")
        if self.band is not None and not 0.0 < self.band < 1.0:
            raise BudgetError(f"--budget-band {self.band}: must be in (0, 1)")

    @property
    def active(self) -> bool:
        return self.max_params is not None or self.max_gflops is not None

    def usage(self, params: float, flops: float) -> dict[str, float]:
        """Share of each set limit a network uses (1.0 = exactly the limit)."""
        out = {}
        if self.max_params is not None:
            out["params"] = float(params) / self.max_params
        if self.max_gflops is not None:
            out["gflops"] = float(flops) / 1e9 / self.max_gflops
        return out

    def reason(self, params: float, flops: float) -> str:
        """Why a network with these prices is outside the budget; '' when it is inside. With a
        band, the limit it comes closest to (the one that binds) must be used to 1 - band."""
        usage = self.usage(params, flops)
        for name, share in usage.items():
            if share > 1.0 + 1e-9:
                return f"{self._shown(name, params, flops)} > {self._flag(name)}"
        if self.band is not None and usage and max(usage.values()) < 1.0 - self.band - 1e-9:
            name = max(usage, key=lambda k: usage[k])
            return (f"{self._shown(name, params, flops)} < {1 - self.band:.0%} of {self._flag(name)} "
                    f"(--budget-band {self.band})")
        return ""

    def _flag(self, name: str) -> str:
        return f"--max-params {self.max_params}" if name == "params" else f"--max-gflops {self.max_gflops}"

    @staticmethod
    def _shown(name: str, params: float, flops: float) -> str:
        return f"{params:,.0f} parameters" if name == "params" else f"{flops / 1e9:.2f} GFLOPs"

    def admits(self, cost: CostEstimate) -> bool:
        return not self.reason(cost.params, cost.flops)

    def to_dict(self) -> dict[str, float | int | None]:
        return dataclasses.asdict(self)


def scale_widths(config: NetworkConfig, multiplier: float) -> NetworkConfig:
    """The config with the stem and every level `multiplier` times as wide (rounded, at least 1)."""
    if not multiplier > 0:
        raise BudgetError(f"width multiplier {multiplier}: must be positive")
    return dataclasses.replace(config, stem_channels=max(1, round(config.stem_channels * multiplier)),
                               level_channels=tuple(max(1, round(c * multiplier)) for c in config.level_channels))


Price = Callable[[NetworkConfig], CostEstimate]


def genotype_price(genotype: Genotype, patch_size: Sequence[int], batch_size: int = 2) -> Price:
    """config -> the genotype's cost at that config (the function `solve_width_multiplier` searches)."""
    return lambda config: estimate_cost(genotype, config, patch_size, batch_size=batch_size)


def _share(budget: CostBudget, cost: CostEstimate) -> float:
    return max(budget.usage(cost.params, cost.flops).values())


def largest_multiplier(share: Callable[[float], float], start: float = 1.0, iterations: int = 40) -> float | None:
    """The largest width multiplier m in [MIN_WIDTH_MULTIPLIER, MAX_WIDTH_MULTIPLIER] with
    share(m) <= 1, for a share that grows with m (None when even the smallest is over).

    Prices grow about with the square of the width, so the first guess is start / sqrt(share);
    then bisection on a log scale. Channels are rounded to integers, so the price is a step
    function and the answer the largest multiplier at or below the limit, not an exact hit."""
    lo, hi = MIN_WIDTH_MULTIPLIER, MAX_WIDTH_MULTIPLIER
    if share(lo) > 1.0:
        return None
    if share(hi) <= 1.0:
        return hi
    guess = min(max(start / math.sqrt(max(share(start), 1e-12)), lo), hi)
    if share(guess) <= 1.0:
        lo = guess
    else:
        hi = guess
    for _ in range(iterations):
        mid = math.sqrt(lo * hi)
        if share(mid) <= 1.0:
            lo = mid
        else:
            hi = mid
        if hi / lo < 1.0 + 1e-4:
            break
    return lo


def solve_width_multiplier(price: Price, config: NetworkConfig, budget: CostBudget,
                           iterations: int = 40) -> tuple[float, CostEstimate]:
    """The largest width multiplier whose network stays within every limit of `budget`, with its cost."""
    if not budget.active:
        raise BudgetError("a width can only be solved for a budget with --max-params or --max-gflops")
    m = largest_multiplier(lambda x: _share(budget, price(scale_widths(config, x))), 1.0, iterations)
    if m is None:
        raise BudgetError(f"even at {MIN_WIDTH_MULTIPLIER:g} x the widths the network costs more than the budget "
                          f"({_describe(budget)}): raise the budget")
    return m, price(scale_widths(config, m))


def _describe(budget: CostBudget) -> str:
    parts = []
    if budget.max_params is not None:
        parts.append(f"{budget.max_params:,} parameters")
    if budget.max_gflops is not None:
        parts.append(f"{budget.max_gflops:g} GFLOPs")
    return ", ".join(parts) or "no limit"


@dataclass(frozen=True)
class Pricing:
    """The cost model at one search's plans: what a candidate costs, at the plans' widths or scaled."""

    config: NetworkConfig
    patch_size: tuple[int, ...]
    batch_size: int = 2

    def genotype(self, levels: Sequence[int], ops: Sequence[str]) -> Genotype:
        return Genotype(levels=list(levels), ops=list(ops)).validate()

    def config_for(self, width_multiplier: float | None = None) -> NetworkConfig:
        return self.config if width_multiplier is None else scale_widths(self.config, width_multiplier)

    def cost(self, levels: Sequence[int], ops: Sequence[str], width_multiplier: float | None = None) -> CostEstimate:
        return estimate_cost(self.genotype(levels, ops), self.config_for(width_multiplier), self.patch_size,
                             batch_size=self.batch_size)

    def width_for(self, levels: Sequence[int], ops: Sequence[str], budget: CostBudget) -> tuple[float, CostEstimate]:
        """The width multiplier that brings this candidate to the budget, and its cost there."""
        return solve_width_multiplier(genotype_price(self.genotype(levels, ops), self.patch_size, self.batch_size),
                                      self.config, budget)

    def admitted(self, topologies: Sequence[Sequence[int]], op: str, budget: CostBudget) -> list[int]:
        """Indices of the topologies that, with `op` in every cell, are inside the budget at the plans' widths."""
        return [i for i, t in enumerate(topologies) if budget.admits(self.cost(t, [op] * len(t)))]
