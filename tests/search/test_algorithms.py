"""Clustering, mutation and evolution with fake evaluators (no training)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from c2fnas_auto.nas.genotype import OPS, check_levels
from c2fnas_auto.nas.topology import enumerate_topologies, topology_distance, topology_neighbours
from c2fnas_auto.search.clustering import distance_matrix, k_medoids
from c2fnas_auto.search.distributed import DistContext
from c2fnas_auto.search.evolution import coarse_evolution, fine_evolution, initial_topologies
from c2fnas_auto.search.runner import CandidateRunner
from c2fnas_auto.search.state import SearchState

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


def _run_coarse(topologies, clustering, budget, seed, evaluate):
    state = SearchState(task_name="t", settings={})
    runner = CandidateRunner(state, "coarse", evaluate, save=lambda: None)
    res = coarse_evolution(topologies, clustering, topology_neighbours, "3d", 12, runner.run, budget=budget,
                           population=6, tournament=3, children_per_round=3, seed=seed)
    return res, runner


def test_coarse_evolution_is_seeded_and_improves(space):
    topologies, dist = space
    clustering = k_medoids(dist, 6, seed=0)
    calls = []

    def evaluate(p):
        calls.append(p.key())
        return {"score": topology_score(p.levels)}

    a, ra = _run_coarse(topologies, clustering, 30, 5, evaluate)
    b, _ = _run_coarse(topologies, clustering, 30, 5, evaluate)
    c, _ = _run_coarse(topologies, clustering, 30, 6, evaluate)
    keys = lambda r: [x.key() for x in r.records]  # noqa: E731
    assert keys(a) == keys(b), "same seed -> same decisions"
    assert keys(a) != keys(c)
    trained = [r for r in a.records if r.status == "done"]
    assert len(trained) == 30 == ra.evaluations, "budget counts trained candidates; duplicates are reused"
    assert len(set(r.key() for r in trained)) == 30
    assert all(r.ops == ["3d"] * 12 for r in a.records)
    # the initial population is one medoid per cluster
    first = [tuple(r.levels) for r in a.records[:6]]
    assert sorted(first) == sorted(topologies[m] for m in clustering.medoids)
    assert {r.cluster for r in a.records[:6]} == set(range(6))
    # every child is a one-step neighbour of an earlier candidate and the search climbs
    assert a.best.score == max(r.score for r in trained)
    assert a.best.score > max(r.score for r in a.records[:6])


def test_initial_population_fills_from_clusters(space):
    topologies, dist = space
    clustering = k_medoids(dist, 3, seed=0)
    chosen = initial_topologies(clustering, topologies, 7, random.Random(0))
    assert len(chosen) == len(set(chosen)) == 7
    assert set(clustering.medoids) <= set(chosen)
    assert {clustering.labels[i] for i in chosen} == {0, 1, 2}


def test_skipped_candidates_are_not_trained_and_not_counted(space):
    topologies, dist = space
    clustering = k_medoids(dist, 6, seed=0)

    def evaluate(p):
        if max(p.levels) >= 3:
            return {"status": "skipped", "score": None, "reason": "over memory"}
        return {"score": topology_score(p.levels)}

    res, _ = _run_coarse(topologies, clustering, 8, 0, evaluate)
    done = [r for r in res.records if r.status == "done"]
    assert len(done) == 8
    assert all(max(r.levels) <= 2 for r in done)
    assert all(r.score is None for r in res.records if r.status == "skipped")
    assert max(res.best.levels) <= 2


def test_fine_evolution_seeded_and_finds_better_ops():
    def run(seed):
        state = SearchState(task_name="t", settings={})
        runner = CandidateRunner(state, "fine", lambda p: {"score": ops_score(p.ops)}, save=lambda: None)
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


def test_fine_constraint_skips():
    state = SearchState(task_name="t", settings={})

    def evaluate(p):
        if p.ops.count("3d") > 6:
            return {"status": "skipped", "score": None, "reason": "GFLOPs"}
        return {"score": ops_score(p.ops)}

    runner = CandidateRunner(state, "fine", evaluate, save=lambda: None)
    res = fine_evolution(TARGET_LEVELS, OPS, runner.run, population=6, generations=4, seed=0, start_ops=["3d"] * 12)
    assert res.records[0].status == "skipped"
    assert res.best.ops.count("3d") <= 6


def test_runner_replays_and_rejects_foreign_state():
    from c2fnas_auto.search.runner import Proposal
    from c2fnas_auto.search.state import SearchStateError

    state = SearchState(task_name="t", settings={})
    n = []
    ev = lambda p: n.append(1) or {"score": 0.5}  # noqa: E731
    props = [Proposal(levels=TARGET_LEVELS, ops=tuple(TARGET_OPS)), Proposal(levels=TARGET_LEVELS, ops=("3d",) * 12)]
    CandidateRunner(state, "fine", ev, save=lambda: None).run(props)
    assert len(n) == 2
    again = CandidateRunner(state, "fine", ev, save=lambda: None)
    assert [r.index for r in again.run(props)] == [0, 1] and len(n) == 2
    with pytest.raises(SearchStateError, match="other code or settings"):
        CandidateRunner(state, "fine", ev, save=lambda: None).run(props[::-1])


def test_dist_context_single_process_map():
    assert DistContext().map(lambda x: x * 2, [1, 2, 3]) == [2, 4, 6]

