"""The two evolutionary searches, independent of training.

Both take `run_batch(proposals) -> records` (a `CandidateRunner.run`) and a seed, and
draw every random decision from one `random.Random(seed)` in a fixed order. Given the
same scores they make the same decisions, which is what makes replay-resume and
`torchrun` ranks agree.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass
from typing import Callable, Sequence

from c2fnas_auto.search.clustering import Clustering
from c2fnas_auto.search.runner import Proposal
from c2fnas_auto.search.state import CandidateRecord

RunBatch = Callable[[Sequence[Proposal]], list[CandidateRecord]]
Topology = tuple[int, ...]


def _best(records: Sequence[CandidateRecord]) -> CandidateRecord | None:
    ok = [r for r in records if r.ok]
    if not ok:
        return None
    return max(ok, key=lambda r: (r.score, -r.index))


@dataclass
class CoarseResult:
    records: list[CandidateRecord]
    best: CandidateRecord | None


def initial_topologies(clustering: Clustering, topologies: Sequence[Topology], population: int,
                       rng: random.Random) -> list[int]:
    """One medoid per cluster (clusters in seeded random order) up to `population`;
    when there are fewer clusters than places, random members round-robin over clusters."""
    k = len(clustering.medoids)
    order = rng.sample(range(k), k)
    chosen = [clustering.medoids[c] for c in order[:population]]
    members = {c: [i for i in clustering.members(c) if i not in chosen] for c in order}
    while len(chosen) < min(population, len(topologies)):
        progressed = False
        for c in order:
            if len(chosen) >= population:
                break
            if members[c]:
                chosen.append(members[c].pop(rng.randrange(len(members[c]))))
                progressed = True
        if not progressed:
            break
    return chosen


def coarse_evolution(topologies: Sequence[Topology], clustering: Clustering,
                     neighbours: Callable[[Topology], Sequence[Topology]], op: str, num_cells: int,
                     run_batch: RunBatch, budget: int, population: int, tournament: int = 4,
                     children_per_round: int = 4, seed: int = 0, max_proposals: int | None = None) -> CoarseResult:
    """Regularized evolution (Real et al. 2019) over macro topologies, in rounds of
    `children_per_round` children so a round can be spread over ranks.

    Each child is a one-step neighbour of a tournament winner; the oldest members leave
    the population. `budget` counts trained candidates only: skipped (over memory) and
    repeated topologies cost nothing and do not count, `max_proposals` bounds the loop.
    """
    rng = random.Random(seed)
    index_of = {tuple(t): i for i, t in enumerate(topologies)}
    ops = (op,) * num_cells
    max_proposals = max_proposals or 20 * budget + 100
    history: list[CandidateRecord] = []

    def proposal(t: Topology, generation: int) -> Proposal:
        return Proposal(levels=tuple(t), ops=ops, cluster=clustering.labels[index_of[tuple(t)]],
                        generation=generation)

    def trained() -> int:
        return sum(r.status == "done" for r in history)

    start = initial_topologies(clustering, topologies, population, rng)[:budget]
    pop: deque[CandidateRecord] = deque()
    generation = 0
    batch = [proposal(topologies[i], generation) for i in start]
    while batch:
        records = run_batch(batch)
        history.extend(records)
        for r in records:
            if r.ok:
                pop.append(r)
                while len(pop) > population:
                    pop.popleft()
        remaining = budget - trained()
        if remaining <= 0 or len(history) >= max_proposals or len({r.key() for r in history}) >= len(topologies):
            break
        generation += 1
        n = min(children_per_round, remaining)
        batch = []
        for _ in range(n):
            if not pop:  # nothing trainable yet: explore at random
                batch.append(proposal(topologies[rng.randrange(len(topologies))], generation))
                continue
            contestants = rng.sample(list(pop), min(tournament, len(pop)))
            parent = max(contestants, key=lambda r: (r.score, -r.index))
            options = list(neighbours(tuple(parent.levels)))
            child = options[rng.randrange(len(options))] if options else tuple(parent.levels)
            batch.append(proposal(child, generation))
    return CoarseResult(records=history, best=_best(history))


@dataclass
class FineResult:
    records: list[CandidateRecord]
    best: CandidateRecord | None
    generations: list[dict]


def fine_evolution(levels: Sequence[int], op_choices: Sequence[str], run_batch: RunBatch, population: int,
                   generations: int, seed: int = 0, start_ops: Sequence[str] | None = None,
                   crossover_prob: float = 0.5, max_tries: int = 50) -> FineResult:
    """Generational evolution over the per-cell ops of one topology.

    Generation 0 is `population` random op choices (plus `start_ops`, the coarse stage's
    uniform choice, as a known baseline). Each later generation keeps the better half
    (elites, not re-scored) and fills up with children: uniform crossover of two elites
    (with `crossover_prob`) followed by a one-cell op change. Children never repeat an
    op choice already proposed in this stage (up to `max_tries` draws).
    """
    rng = random.Random(seed)
    n = len(levels)
    lv = tuple(levels)
    seen: set[tuple[str, ...]] = set()
    history: list[CandidateRecord] = []
    stats: list[dict] = []

    def fresh(make: Callable[[], tuple[str, ...]]) -> tuple[str, ...]:
        cand = make()
        for _ in range(max_tries):
            if cand not in seen:
                break
            cand = make()
        seen.add(cand)
        return cand

    def random_ops() -> tuple[str, ...]:
        return tuple(op_choices[rng.randrange(len(op_choices))] for _ in range(n))

    def mutate(ops: tuple[str, ...]) -> tuple[str, ...]:
        cell = rng.randrange(n)
        others = [o for o in op_choices if o != ops[cell]]
        return ops[:cell] + (others[rng.randrange(len(others))],) + ops[cell + 1:]

    def child_of(parents: list[CandidateRecord]) -> tuple[str, ...]:
        a = tuple(parents[rng.randrange(len(parents))].ops)
        if len(parents) > 1 and rng.random() < crossover_prob:
            b = tuple(parents[rng.randrange(len(parents))].ops)
            a = tuple(a[i] if rng.random() < 0.5 else b[i] for i in range(n))
        return mutate(a)

    first: list[tuple[str, ...]] = []
    if start_ops is not None:
        first.append(tuple(start_ops))
        seen.add(tuple(start_ops))
    while len(first) < population:
        first.append(fresh(random_ops))
    elites: list[CandidateRecord] = []
    batch = first
    for g in range(generations):
        records = run_batch([Proposal(levels=lv, ops=o, generation=g) for o in batch])
        history.extend(records)
        current = elites + records
        ok = sorted((r for r in current if r.ok), key=lambda r: (-r.score, r.index))
        scores = [r.score for r in ok]
        stats.append({"generation": g, "evaluated": len(records), "valid": len(ok),
                      "best": max(scores) if scores else None,
                      "mean": sum(scores) / len(scores) if scores else None})
        if g == generations - 1:
            break
        elites = ok[:max(1, population // 2)]
        need = population - len(elites)
        batch = [fresh(lambda: child_of(elites)) if elites else fresh(random_ops) for _ in range(need)]
    return FineResult(records=history, best=_best(history), generations=stats)
