"""The two evolutionary searches, independent of training.

Coarse: `propose_topology` draws one new rung-0 candidate at a time for the asynchronous
schedule (`asha.py`), from the seed, its number and the scores finished so far. Fine:
`fine_evolution` takes `run_batch(proposals) -> records` (a `CandidateRunner.run`) and
draws every random decision from one `random.Random(seed)` in a fixed order; given the
same scores it makes the same decisions, which is what makes replay-resume and several
workers agree.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from typing import Callable, Sequence

from c2fnas_auto.search.clustering import Clustering
from c2fnas_auto.search.runner import Proposal
from c2fnas_auto.search.state import CandidateRecord, best_first

RunBatch = Callable[[Sequence[Proposal]], list[CandidateRecord]]
Topology = tuple[int, ...]


def _best(records: Sequence[CandidateRecord]) -> CandidateRecord | None:
    ok = [r for r in records if r.ok]
    if not ok:
        return None
    return max(ok, key=lambda r: (r.score, -r.index))


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


def propose_topology(n: int, topologies: Sequence[Topology], clustering: Clustering,
                     neighbours: Callable[[Topology], Sequence[Topology]],
                     history: Sequence[tuple[int, Topology, float | None]], population: int, tournament: int,
                     seed: int, max_tries: int = 50) -> int | None:
    """Index of the topology for coarse candidate n (asynchronous regularized evolution).

    `history` is (candidate, levels, rung-0 score or None) of every candidate proposed so
    far. Candidates 0..population-1 are the cluster medoids (`initial_topologies`); later
    ones are one-step neighbours of the tournament winner among the `population` youngest
    scored candidates (the oldest leave), never a topology already proposed. Each draw uses
    its own `Random((seed, n))`, so it depends only on the seed and on what was finished.
    None when every topology has been proposed."""
    used = {tuple(t) for _, t, _ in history}
    if len(used) >= len(topologies):
        return None
    index_of = {tuple(t): i for i, t in enumerate(topologies)}
    initial = initial_topologies(clustering, topologies, population, random.Random(seed))
    if n < len(initial) and tuple(topologies[initial[n]]) not in used:
        return initial[n]
    rng = random.Random(f"{seed}:{n}")
    scored = sorted((c, t, s) for c, t, s in history if s is not None)[-population:]
    for _ in range(max_tries if scored else 0):
        contestants = rng.sample(scored, min(tournament, len(scored)))
        parent = max(contestants, key=lambda x: (x[2], -x[0]))
        options = [tuple(o) for o in neighbours(tuple(parent[1])) if tuple(o) not in used]
        if options:
            return index_of[options[rng.randrange(len(options))]]
    free = [i for i, t in enumerate(topologies) if tuple(t) not in used]
    return free[rng.randrange(len(free))]


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

    One function: the generations share the population, the seen set and the generator."""
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
        ok = sorted((r for r in current if r.ok), key=best_first)
        scores = [r.score for r in ok if r.score is not None]
        stats.append({"generation": g, "evaluated": len(records), "valid": len(ok),
                      "best": max(scores) if scores else None,
                      "mean": sum(scores) / len(scores) if scores else None})
        if g == generations - 1:
            break
        elites = ok[:max(1, population // 2)]
        need = population - len(elites)
        batch = [fresh(functools.partial(child_of, elites)) if elites else fresh(random_ops) for _ in range(need)]
    return FineResult(records=history, best=_best(history), generations=stats)
