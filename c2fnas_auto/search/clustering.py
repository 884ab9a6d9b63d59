"""k-medoids clustering of macro topologies.

The coarse stage seeds its population with one topology per cluster so the first
candidates cover different shapes of the 1486 U-shaped level sequences instead of
near-duplicates. k-medoids (not k-means) because a topology distance has no mean:
the centre of a cluster must itself be a valid topology.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from c2fnas_auto.errors import C2FNASError
from c2fnas_auto.nas.topology import topology_distance

Topology = tuple[int, ...]


@dataclass
class Clustering:
    """`labels[i]` is the cluster of topology i; `medoids[c]` the index of cluster c's medoid."""

    medoids: list[int]
    labels: list[int]
    cost: float

    def members(self, cluster: int) -> list[int]:
        return [i for i, c in enumerate(self.labels) if c == cluster]


def distance_matrix(topologies: Sequence[Topology],
                    distance: Callable[[Topology, Topology], float]) -> np.ndarray:
    """Symmetric matrix of pairwise distances (the function is called once per pair).

    The default topology distance (L1 between level sequences) is computed in one numpy
    broadcast: calling it a million times in Python took ~6 s of a demo search.
    """
    if distance is topology_distance and topologies:
        arr = np.asarray(topologies, dtype=np.int64)
        return np.abs(arr[:, None, :] - arr[None, :, :]).sum(axis=-1).astype(np.float64)
    n = len(topologies)
    d = np.zeros((n, n), dtype=np.float64)
    for i in range(n):
        a = topologies[i]
        for j in range(i + 1, n):
            d[i, j] = d[j, i] = distance(a, topologies[j])
    return d


def k_medoids(dist: np.ndarray, k: int, seed: int = 0, max_iter: int = 100) -> Clustering:
    """Alternating k-medoids (assign to nearest medoid, re-centre each cluster) from a
    k-means++-style seeded start. Deterministic for a given seed; ties go to the lowest index."""
    n = dist.shape[0]
    if not 1 <= k <= n:
        raise C2FNASError(f"--clusters {k}: must be between 1 and the number of topologies ({n})")
    rng = np.random.default_rng(seed)
    medoids = [int(rng.integers(n))]
    while len(medoids) < k:
        nearest = dist[:, medoids].min(axis=1)
        weights = nearest ** 2
        total = weights.sum()
        if total <= 0:  # every point coincides with a medoid: take unused points in order
            unused = [i for i in range(n) if i not in medoids]
            medoids.append(unused[0])
            continue
        medoids.append(int(rng.choice(n, p=weights / total)))
    labels = np.argmin(dist[:, medoids], axis=1)
    for _ in range(max_iter):
        new_medoids = []
        for c in range(k):
            members = np.flatnonzero(labels == c)
            if members.size == 0:  # cannot happen after assignment (a medoid is its own member)
                new_medoids.append(medoids[c])
                continue
            within = dist[np.ix_(members, members)].sum(axis=1)
            new_medoids.append(int(members[int(np.argmin(within))]))
        new_labels = np.argmin(dist[:, new_medoids], axis=1)
        if new_medoids == medoids and np.array_equal(new_labels, labels):
            break
        medoids, labels = new_medoids, new_labels
    cost = float(dist[np.arange(n), np.asarray(medoids)[labels]].sum())
    return Clustering(medoids=list(medoids), labels=[int(x) for x in labels], cost=cost)
