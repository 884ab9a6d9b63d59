"""The coarse stage's space: every valid macro topology, its neighbours, a distance.

Enumeration is by depth-first search with the same rules as `check_levels`, so the
count (1486 for 12 cells on 4 levels) follows from the rules rather than a table.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

from c2fnas_auto.errors import GenotypeError
from c2fnas_auto.nas.genotype import OPS, Genotype, check_levels


def enumerate_topologies(num_cells: int = 12, num_levels: int = 4) -> list[tuple[int, ...]]:
    """All level sequences that pass `check_levels`, in lexicographic order."""
    return list(_enumerate(num_cells, num_levels))


@lru_cache(maxsize=8)
def _enumerate(num_cells: int, num_levels: int) -> tuple[tuple[int, ...], ...]:
    out: list[tuple[int, ...]] = []

    def walk(seq: list[int], descending: bool) -> None:
        # descending: still in the encoder (no up step yet)
        i = len(seq)
        prev = seq[-1] if seq else 1
        if i == num_cells:
            if prev == 1:
                out.append(tuple(seq))
            return
        remaining = num_cells - i  # cells still to place, the last must reach level 1
        for lv in (prev - 1, prev, prev + 1):
            if not 1 <= lv <= num_levels:
                continue
            if lv > prev and not descending:
                continue
            if lv - 1 > remaining - 1:  # cannot climb back to level 1 in time
                continue
            walk(seq + [lv], descending and lv >= prev)

    walk([], True)
    return tuple(sorted(out))


def _is_valid(levels: Sequence[int], num_levels: int) -> bool:
    try:
        check_levels(levels, num_levels, len(levels))
    except GenotypeError:
        return False
    return True


def topology_neighbours(levels: Sequence[int], num_levels: int = 4) -> list[tuple[int, ...]]:
    """Valid topologies one mutation away: one cell moved up or down by one level."""
    levels = tuple(levels)
    out = []
    for i in range(len(levels)):
        for d in (-1, 1):
            cand = levels[:i] + (levels[i] + d,) + levels[i + 1:]
            if _is_valid(cand, num_levels):
                out.append(cand)
    return out


def genotype_neighbours(genotype: Genotype) -> list[Genotype]:
    """Genotypes with the same topology and exactly one cell's operation changed."""
    out = []
    for i, op in enumerate(genotype.ops):
        for other in OPS:
            if other != op:
                ops = list(genotype.ops)
                ops[i] = other
                out.append(genotype.with_ops(ops))
    return out


def topology_distance(a: Sequence[int], b: Sequence[int]) -> int:
    """L1 distance between level sequences: how far the cells' resolutions differ in total.

    Two topologies that differ by one neighbour step are at distance 1; the metric
    treats a shift of the U's depth as larger than a shift of one cell.
    """
    if len(a) != len(b):
        raise GenotypeError(f"cannot compare topologies of {len(a)} and {len(b)} cells")
    return sum(abs(x - y) for x, y in zip(a, b))
