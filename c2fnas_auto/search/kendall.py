"""Kendall's tau-b: how well a cheap score ranks candidates like an expensive one.

Our own O(n^2) implementation (n is at most a few hundred candidates): tau-b corrects
for ties in either list, so rungs with equal scores (e.g. two Dice of 0) still compare.
"""

from __future__ import annotations

import math
from typing import Sequence


def kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> float | None:
    """tau-b = (concordant - discordant) / sqrt((n0 - ties_x) (n0 - ties_y)), n0 = n(n-1)/2.

    None when it is undefined: fewer than two pairs, or one list is constant.
    """
    if len(x) != len(y):
        raise ValueError(f"kendall_tau_b: {len(x)} and {len(y)} values")
    n = len(x)
    concordant = discordant = ties_x = ties_y = 0
    for i in range(n):
        for j in range(i + 1, n):
            dx = (x[i] > x[j]) - (x[i] < x[j])
            dy = (y[i] > y[j]) - (y[i] < y[j])
            if dx == 0:
                ties_x += 1
            if dy == 0:
                ties_y += 1
            if dx and dy:
                concordant += dx == dy
                discordant += dx != dy
    n0 = n * (n - 1) // 2
    denom = math.sqrt((n0 - ties_x) * (n0 - ties_y))
    if denom == 0:
        return None
    return (concordant - discordant) / denom
