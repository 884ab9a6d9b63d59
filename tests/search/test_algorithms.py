"""Clustering, mutation and evolution with fake evaluators (no training)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from c2fnas_auto.nas.genotype import OPS, check_levels
from c2fnas_auto.nas.topology import enumerate_topologies, topology_distance, topology_neighbours
from c2fnas_auto.search.clustering import distance_matrix, k_medoids
from c2fnas_auto.search.evolution import fine_evolution, initial_topologies, propose_topology
from c2fnas_auto.search.runner import CandidateRunner
from c2fnas_auto.search.optuna_trials import OptunaTrials
from c2fnas_auto.search.storage import default_url

from .fakes import TARGET_LEVELS, TARGET_OPS, ops_score, topology_score


@pytest.fixture(scope="module")
def space():
    topologies = enumerate_topologies()
    dist = distance_matrix(topologies, topology_distance)
    return topologies, dist


def test_clusters_partition_all_topologies(space):
    topologies, dist = space
    assert len(topologies) == 1486
    c = k_medoids(dist, 12, seed=3)
    assert len(c.labels) == 1486 and len(c.medoids) == 12
    members = [c.members(k) for k in range(12)]
    assert all(members), "no empty cluster"
    flat = sorted(i for m in members for i in m)
    assert flat == list(range(1486)), "every topology in exactly one cluster"
    for k, m in enumerate(c.medoids):
        assert c.labels[m] == k, "a medoid belongs to its own cluster"
    # each topology is at least as close to its own medoid as to any other
    own = dist[np.arange(1486), np.asarray(c.medoids)[c.labels]]
    assert np.all(own <= dist[:, c.medoids].min(axis=1) + 1e-9)
    # seeded: same seed -> same clustering; and clusters lower the cost against random medoids
    assert k_medoids(dist, 12, seed=3).labels == c.labels
    rnd = random.Random(0).sample(range(1486), 12)
    assert c.cost < dist[:, rnd].min(axis=1).sum()


def test_bad_cluster_count_is_user_error(space):
    _, dist = space
    with pytest.raises(Exception, match="--clusters 0"):
        k_medoids(dist, 0)


def test_mutations_stay_valid(space):
    topologies, _ = space
    rng = random.Random(1)
    valid = set(topologies)
    for t in rng.sample(topologies, 200):
        for n in topology_neighbours(t):
            assert n in valid and n != t
            check_levels(n)
            assert sum(a != b for a, b in zip(n, t)) >= 1


def _propose_all(topologies, clustering, n, seed, score=topology_score):
    """Candidates 0..n-1 proposed one after another, each scored before the next."""
    history = []
    for c in range(n):
        i = propose_topology(c, topologies, clustering, topology_neighbours, history, population=6, tournament=3,
                             seed=seed)
        history.append((c, tuple(topologies[i]), score(topologies[i])))
    return history


def test_asynchronous_evolution_is_seeded_and_improves(space):
    topologies, dist = space
    clustering = k_medoids(dist, 6, seed=0)
    a = _propose_all(topologies, clustering, 30, 5)
    b = _propose_all(topologies, clustering, 30, 5)
    c = _propose_all(topologies, clustering, 30, 6)
    assert a == b, "same seed and scores -> same proposals"
    assert [t for _, t, _ in a] != [t for _, t, _ in c]
    assert len({t for _, t, _ in a}) == 30, "a topology is never proposed twice"
    # the first `population` candidates are the cluster medoids, one per cluster
    assert sorted(t for _, t, _ in a[:6]) == sorted(topologies[m] for m in clustering.medoids)
    # later ones are one-step neighbours of an earlier candidate, and the search climbs
    earlier = set()
    for _, t, _ in a:
        if earlier and len(earlier) >= 6:
            assert any(t in {tuple(n) for n in topology_neighbours(e)} for e in earlier)
        earlier.add(t)
    assert max(s for _, _, s in a) > max(s for _, _, s in a[:6])
    # unscored history (candidates still running) gives random fresh topologies, still distinct
    pending = [(k, t, None) for k, t, _ in a[:8]]
    i = propose_topology(8, topologies, clustering, topology_neighbours, pending, 6, 3, seed=5)
    assert tuple(topologies[i]) not in {t for _, t, _ in pending}


def test_proposals_end_when_the_space_is_exhausted():
    from c2fnas_auto.search.clustering import Clustering

    tops = [(1, 1), (1, 2), (2, 2)]
    clustering = Clustering(medoids=[0], labels=[0, 0, 0], cost=0.0)
    history = [(k, t, 0.5) for k, t in enumerate(tops)]
    assert propose_topology(3, tops, clustering, lambda t: [], history, 2, 2, seed=0) is None
    # no neighbours left: a random unused topology
    assert propose_topology(2, tops, clustering, lambda t: [], history[:2], 2, 2, seed=0) == 2


def test_initial_population_fills_from_clusters(space):
    topologies, dist = space
    clustering = k_medoids(dist, 3, seed=0)
    chosen = initial_topologies(clustering, topologies, 7, random.Random(0))
    assert len(chosen) == len(set(chosen)) == 7
    assert set(clustering.medoids) <= set(chosen)
    assert {clustering.labels[i] for i in chosen} == {0, 1, 2}


def _runner(tmp_path, evaluate, name="store"):
    return CandidateRunner(OptunaTrials(default_url(tmp_path / name), "T").start(), "fine", evaluate)


def test_fine_evolution_seeded_and_finds_better_ops(tmp_path):
    def run(seed):
        runner = _runner(tmp_path, lambda p: {"score": ops_score(p.ops)}, f"s{seed}-{len(list(tmp_path.iterdir()))}")
        return fine_evolution(TARGET_LEVELS, OPS, runner.run, population=8, generations=6, seed=seed,
                              start_ops=["3d"] * 12), runner

    a, ra = run(1)
    b, _ = run(1)
    assert [r.key() for r in a.records] == [r.key() for r in b.records]
    assert len(a.generations) == 6
    assert a.records[0].ops == ["3d"] * 12
    assert all(set(r.ops) <= set(OPS) and r.levels == list(TARGET_LEVELS) for r in a.records)
    bests = [g["best"] for g in a.generations]
    assert bests == sorted(bests), "elites are kept: the best never drops"
    assert bests[-1] > bests[0]
    assert ra.evaluations == 8 + 5 * 4


def test_fine_constraint_skips(tmp_path):
    def evaluate(p):
        if p.ops.count("3d") > 6:
            return {"status": "skipped", "score": None, "reason": "GFLOPs"}
        return {"score": ops_score(p.ops)}

    runner = _runner(tmp_path, evaluate)
    res = fine_evolution(TARGET_LEVELS, OPS, runner.run, population=6, generations=4, seed=0, start_ops=["3d"] * 12)
    assert res.records[0].status == "skipped"
    assert res.best.ops.count("3d") <= 6


def test_runner_replays_and_rejects_foreign_state(tmp_path):
    from c2fnas_auto.search.runner import Proposal
    from c2fnas_auto.search.state import SearchStateError

    n = []
    ev = lambda p: n.append(1) or {"score": 0.5}  # noqa: E731
    props = [Proposal(levels=TARGET_LEVELS, ops=tuple(TARGET_OPS)), Proposal(levels=TARGET_LEVELS, ops=("3d",) * 12),
             Proposal(levels=TARGET_LEVELS, ops=tuple(TARGET_OPS))]
    recs = _runner(tmp_path, ev).run(props)
    assert len(n) == 2 and [r.status for r in recs] == ["done", "done", "reused"]
    again = _runner(tmp_path, ev)
    assert [r.index for r in again.run(props)] == [0, 1, 2] and len(n) == 2, "answered from the stored results"
    with pytest.raises(SearchStateError, match="other code or settings"):
        _runner(tmp_path, ev).run([props[1], props[0]])
