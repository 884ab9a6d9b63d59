"""The search's stages: clustering, the coarse rungs, the supernet and the fine evolution."""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

from c2fnas_auto.errors import C2FNASError
from c2fnas_auto.search.asha import CoarseView, Rungs, best_candidate, run_coarse
from c2fnas_auto.search.clustering import Clustering, distance_matrix, k_medoids
from c2fnas_auto.search.distributed import DistContext
from c2fnas_auto.search.evolution import fine_evolution, propose_topology
from c2fnas_auto.search.noise import spread_sample
from c2fnas_auto.search.optuna_trials import OptunaTrials
from c2fnas_auto.search.progress import Progress
from c2fnas_auto.search.runner import CandidateRunner, Evaluate, Proposal, record_from_result, timed
from c2fnas_auto.search.saving import Saver
from c2fnas_auto.search.settings import SearchHooks, SearchSettings, Topologies
from c2fnas_auto.search.state import CandidateRecord, SearchState, SearchStateError
from c2fnas_auto.search.stop import StopFlag


_DISTANCES: dict[tuple, Any] = {}


def _distances(topo: Topologies):
    """The pairwise distance matrix, computed once per process (about a second for 1486)."""
    key = (topo.distance, tuple(topo.topologies))
    if key not in _DISTANCES:
        _DISTANCES.clear()
        _DISTANCES[key] = distance_matrix(topo.topologies, topo.distance)
    return _DISTANCES[key]


def cluster_once(state: SearchState, topo: Topologies, settings: SearchSettings) -> Clustering:
    """Cluster once and keep the result in the state (resumes and joiners reuse it)."""
    c = state.clusters
    if c.get("labels") and len(c["labels"]) == len(topo.topologies):
        return Clustering(medoids=c["medoids"], labels=c["labels"], cost=c.get("cost", 0.0))
    t0 = time.perf_counter()
    clustering = k_medoids(_distances(topo), settings.clusters, seed=settings.seed)
    state.clusters = {"k": settings.clusters, "medoids": clustering.medoids, "labels": clustering.labels,
                      "cost": clustering.cost,
                      "medoid_levels": [list(topo.topologies[i]) for i in clustering.medoids],
                      "sizes": [clustering.labels.count(k) for k in range(settings.clusters)]}
    state.stage_seconds["clustering"] = time.perf_counter() - t0
    return clustering


def coarse_records(view: CoarseView) -> list[CandidateRecord]:
    """Every finished coarse job (any rung, any worker) in the order it finished."""
    results = sorted(view.results.values(), key=lambda r: (r.get("finished_at", 0.0), r["job"]))
    return [record_from_result(i, "coarse", r) for i, r in enumerate(results)]


def standalone_sample(records: Sequence[CandidateRecord], n: int) -> list[CandidateRecord]:
    """n distinct scored candidates spread evenly over the fitness ranking (best and worst included)."""
    done = sorted((r for r in records if r.status == "done" and r.score is not None), key=lambda r: (-r.score, r.index))
    return spread_sample(done, n)


def wait_for_supernet(store: OptunaTrials, stop: StopFlag) -> dict[str, Any]:
    """A non-main worker waits while the main worker trains the supernet."""
    while True:
        mark = store.marker("supernet")
        if mark is not None:
            return mark
        main = store.marker("main")
        if main is not None and not store.alive(main["worker"]):
            raise C2FNASError(f"{store.folder}: the main worker stopped before the supernet was trained; "
                              "rerun the search with --continue")
        stop.check()
        store.wait()


def coarse_stage(store: OptunaTrials, state: SearchState, settings: SearchSettings, rungs: Rungs, hooks: SearchHooks,
                  topo: Topologies, clustering: Clustering, dist: DistContext, bar: Progress, stop: StopFlag,
                  save: Saver, main: bool, width: Callable[[Sequence[int], Sequence[str]], float | None] | None = None
                  ) -> tuple[list[int], CandidateRecord]:
    """`width(levels, ops)`: the equal-cost search's width multiplier for a new candidate."""
    t0 = time.perf_counter()

    def propose(n: int, view: CoarseView) -> dict[str, Any] | None:
        history = [(c, tuple(p["levels"]), view.rung_scores(0).get(c)) for c, p in sorted(view.candidates.items())]
        i = propose_topology(n, topo.topologies, clustering, topo.neighbours, history, settings.population,
                             settings.tournament, settings.seed)
        if i is None:
            return None
        payload = {"levels": list(topo.topologies[i]), "ops": [settings.coarse_op] * topo.num_cells,
                   "cluster": clustering.labels[i]}
        if width is not None:
            payload["width_multiplier"] = width(payload["levels"], payload["ops"])
        return payload

    def finished(job, answer) -> None:
        rec = record_from_result(0, "coarse", {"payload": job.payload, "answer": answer, "worker": store.worker_id})
        bar.record(rec, False)
        if main and save.due():  # every worker's results, in the order they finished
            from c2fnas_auto.search.asha import read_view

            state.coarse = coarse_records(read_view(store))
            save()
        elif main:  # this worker's own result: in the state a stop signal saves, without a read
            rec.index, rec.finished_at = len(state.coarse), time.time()
            state.coarse.append(rec)

    bar.start(sum(settings.coarse_candidates // settings.eta ** r for r in range(rungs.count)), "coarse")
    view = run_coarse(store, rungs, settings.coarse_candidates, propose, timed(hooks.coarse_evaluate, dist.rank),
                      finished, stop.check)
    bar.close()
    state.coarse = coarse_records(view)
    state.stage_seconds["coarse"] = state.stage_seconds.get("coarse", 0.0) + time.perf_counter() - t0
    best = best_candidate(view)
    if best is None:
        reasons = [r.reason for r in state.coarse if r.reason]
        raise C2FNASError(f"{store.folder}: no coarse candidate could be trained (all skipped: "
                          f"{reasons[-1] if reasons else 'none proposed'})")
    cand, rung, _ = best
    record = next(r for r in state.coarse if r.candidate == cand and r.rung == rung)
    save()
    return list(record.levels), record


def supernet_stage(store: OptunaTrials, state: SearchState, hooks: SearchHooks, levels: list[int],
              save: Saver, main: bool, stop: StopFlag) -> Any:
    """The main worker trains (or loads) the supernet; the others wait for it, then load it."""
    if main:
        supernet, info = hooks.train_supernet(levels)
        state.supernet = {"levels": levels, **{k: v for k, v in info.items() if k != "loaded"}}
        save()
        store.mark("supernet", {"levels": levels})
        stop.check()
        return supernet
    mark = wait_for_supernet(store, stop)
    if list(mark["levels"]) != list(levels):
        raise SearchStateError(f"{store.folder}: the supernet was trained on {mark['levels']} but this worker's "
                               f"coarse winner is {levels}; use --overwrite")
    return hooks.train_supernet(levels)[0]


def fine_stage(store: OptunaTrials, state: SearchState, settings: SearchSettings, topo: Topologies,
                evaluate: Evaluate, levels: list[int], dist: DistContext, bar: Progress, stop: StopFlag,
                save: Saver) -> CandidateRecord:
    runner = CandidateRunner(store, "fine", "f", evaluate, dist.rank, bar.record, None, stop.check)

    def on_finish() -> None:
        if save.main:  # the others' state is never written: no need to read the trials
            state.fine = runner.partial()
            save.soon()

    runner.on_finish = on_finish
    p = settings.population
    bar.start(p + (settings.generations - 1) * (p - max(1, p // 2)), "fine")
    fine = fine_evolution(levels, topo.op_choices, runner.run, population=settings.population,
                          generations=settings.generations, seed=settings.seed + 1,
                          start_ops=[settings.coarse_op] * topo.num_cells)
    bar.close()
    state.fine = runner.records
    state.fine_generations = fine.generations
    if fine.best is None:
        raise C2FNASError(f"{store.folder}: no op choice met the constraints (the budget: --max-params "
                          f"{settings.max_params}, --max-gflops {settings.max_gflops}, --budget {settings.budget}, "
                          f"--budget-band {settings.budget_band}); relax them and rerun with --overwrite")
    save()
    return fine.best


# added to the search seed for the noise check's second training of a candidate
REPEAT_SEED_OFFSET = 1


def repeat_stage(store: OptunaTrials, state: SearchState, stage: str, prefix: str, sample: Sequence[CandidateRecord],
                 evaluate: Evaluate, epochs: int | None, seed: int, dist: DistContext, bar: Progress, stop: StopFlag,
                 save: Saver, width: float | None = None) -> list[CandidateRecord]:
    """Train `sample` again with `seed` (the noise check, noise.py); the records go to `state.<stage>`."""
    runner = CandidateRunner(store, stage, prefix, evaluate, dist.rank, bar.record, None, stop.check)

    def on_finish() -> None:
        if save.main:
            setattr(state, stage, runner.partial())
            save.soon()

    runner.on_finish = on_finish
    bar.start(len(sample), f"{stage.replace('_', ' ')}s")
    runner.run([Proposal(levels=tuple(r.levels), ops=tuple(r.ops), epochs=epochs, seed=seed, rung=r.rung,
                         candidate=r.candidate, generation=r.index,
                         width_multiplier=r.width_multiplier if r.width_multiplier is not None else width)
                for r in sample])
    bar.close()
    setattr(state, stage, runner.records)
    save()
    return runner.records
