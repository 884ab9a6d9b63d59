"""The search's stages: clustering, the coarse rungs, the supernet, the fine evolution and the
stand-alone check, each given the run's `StageContext`."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from c2fnas_auto.errors import C2FNASError
from c2fnas_auto.search.asha import CoarseView, Rungs, best_candidate, read_view, run_coarse
from c2fnas_auto.search.clustering import Clustering, distance_matrix, k_medoids
from c2fnas_auto.search.evolution import fine_evolution, propose_topology
from c2fnas_auto.search.noise import spread_sample
from c2fnas_auto.search.optuna_trials import OptunaTrials
from c2fnas_auto.search.progress import Progress
from c2fnas_auto.search.runner import CandidateRunner, Evaluate, Proposal, record_from_result, timed
from c2fnas_auto.search.saving import Saver
from c2fnas_auto.search.settings import SearchHooks, SearchSettings, Topologies
from c2fnas_auto.search.state import CandidateRecord, SearchState, SearchStateError, best_first
from c2fnas_auto.utils.distributed import DistContext
from c2fnas_auto.utils.stop_signals import StopFlag


@dataclass
class StageContext:
    """The runtime objects of one worker's search, built once by `search_core` and handed to
    every stage. `main`: this worker writes the state (rank 0, not a joiner)."""

    store: OptunaTrials
    state: SearchState
    settings: SearchSettings
    hooks: SearchHooks
    topo: Topologies
    dist: DistContext
    bar: Progress
    stop: StopFlag
    save: Saver
    main: bool

    def runner(self, stage: str, evaluate: Evaluate) -> CandidateRunner:
        """A runner for a generational stage whose records also go to `state.<stage>` as they finish."""
        runner = CandidateRunner(self.store, stage, evaluate, rank=self.dist.rank, on_record=self.bar.record,
                                 check_stop=self.stop.check)

        def on_finish() -> None:
            if self.save.main:  # the others' state is never written: no need to read the trials
                setattr(self.state, stage, runner.partial())
                self.save.soon()

        runner.on_finish = on_finish
        return runner


@functools.lru_cache(maxsize=1)
def distances(distance: Callable[[tuple[int, ...], tuple[int, ...]], float],
              topologies: tuple[tuple[int, ...], ...]) -> np.ndarray:
    """The pairwise distance matrix of `topologies`, kept for the last set asked for: it takes
    about a second for the 1486 topologies, and tests run many searches in one process."""
    return distance_matrix(list(topologies), distance)


def cluster_once(state: SearchState, topo: Topologies, settings: SearchSettings) -> Clustering:
    """Cluster once and keep the result in the state (resumes and joiners reuse it)."""
    c = state.clusters
    if c.get("labels") and len(c["labels"]) == len(topo.topologies):
        return Clustering(medoids=c["medoids"], labels=c["labels"], cost=c.get("cost", 0.0))
    t0 = time.perf_counter()
    clustering = k_medoids(distances(topo.distance, tuple(topo.topologies)), settings.clusters,
                          seed=settings.seed)
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
    done = sorted((r for r in records if r.status == "done" and r.score is not None), key=best_first)
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


def coarse_stage(ctx: StageContext, rungs: Rungs, clustering: Clustering,
                 width: Callable[[Sequence[int], Sequence[str]], float | None] | None = None
                 ) -> tuple[list[int], CandidateRecord]:
    """The coarse rungs: topologies proposed by evolution within clusters, trained under ASHA;
    returns the best one's levels and record. `width(levels, ops)`: the equal-cost search's width
    multiplier for a new candidate."""
    store, state, settings, topo, save = ctx.store, ctx.state, ctx.settings, ctx.topo, ctx.save
    t0 = time.perf_counter()

    def propose(n: int, view: CoarseView) -> dict[str, Any] | None:
        history = [(c, tuple(p["levels"]), view.rung_scores(0).get(c)) for c, p in sorted(view.candidates.items())]
        i = propose_topology(n, topo.topologies, clustering, neighbours=topo.neighbours, history=history,
                             population=settings.population, tournament=settings.tournament, seed=settings.seed)
        if i is None:
            return None
        payload: dict[str, Any] = {"levels": list(topo.topologies[i]), "ops": [settings.coarse_op] * topo.num_cells,
                   "cluster": clustering.labels[i]}
        if width is not None:
            payload["width_multiplier"] = width(payload["levels"], payload["ops"])
        return payload

    def finished(job, answer) -> None:
        rec = record_from_result(0, "coarse", {"payload": job.payload, "answer": answer, "worker": store.worker_id})
        ctx.bar.record(rec, False)
        if ctx.main and save.due():  # every worker's results, in the order they finished
            state.coarse = coarse_records(read_view(store))
            save()
        elif ctx.main:  # this worker's own result: in the state a stop signal saves, without a read
            rec.index, rec.finished_at = len(state.coarse), time.time()
            state.coarse.append(rec)

    ctx.bar.start(sum(settings.coarse_candidates // settings.eta ** r for r in range(rungs.count)), "coarse")
    view = run_coarse(store, rungs, settings.coarse_candidates, propose=propose,
                      evaluate=timed(ctx.hooks.coarse_evaluate, ctx.dist.rank), on_finish=finished,
                      check_stop=ctx.stop.check)
    ctx.bar.close()
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


def supernet_stage(ctx: StageContext, levels: list[int]) -> Any:
    """The main worker trains (or loads) the supernet; the others wait for it, then load it."""
    if ctx.main:
        supernet, info = ctx.hooks.train_supernet(levels)
        ctx.state.supernet = {"levels": levels, **{k: v for k, v in info.items() if k != "loaded"}}
        ctx.save()
        ctx.store.mark("supernet", {"levels": levels})
        ctx.stop.check()
        return supernet
    mark = wait_for_supernet(ctx.store, ctx.stop)
    if list(mark["levels"]) != list(levels):
        raise SearchStateError(f"{ctx.store.folder}: the supernet was trained on {mark['levels']} but this worker's "
                               f"coarse winner is {levels}; use --overwrite")
    return ctx.hooks.train_supernet(levels)[0]


def fine_stage(ctx: StageContext, evaluate: Evaluate, levels: list[int]) -> CandidateRecord:
    """The fine evolution of the op choices on the coarse winner's levels; returns the best."""
    settings, topo = ctx.settings, ctx.topo
    runner = ctx.runner("fine", evaluate)
    p = settings.population
    ctx.bar.start(p + (settings.generations - 1) * (p - max(1, p // 2)), "fine")
    fine = fine_evolution(levels, topo.op_choices, runner.run, population=settings.population,
                          generations=settings.generations, seed=settings.seed + 1,
                          start_ops=[settings.coarse_op] * topo.num_cells)
    ctx.bar.close()
    ctx.state.fine = runner.records
    ctx.state.fine_generations = fine.generations
    if fine.best is None:
        raise C2FNASError(f"{ctx.store.folder}: no op choice met the constraints (the budget: --max-params "
                          f"{settings.max_params}, --max-gflops {settings.max_gflops}, --budget {settings.budget}, "
                          f"--budget-band {settings.budget_band}); relax them and rerun with --overwrite")
    ctx.save()
    return fine.best


def standalone_stage(ctx: StageContext, rungs: Rungs, width: float | None = None) -> None:
    """A sample of the fine stage's op choices trained from scratch for the longest rung, so the
    report can say how well the supernet's scores rank them (off without the hook or a sample);
    `width`: the coarse winner's width multiplier (equal-cost search)."""
    if not ctx.settings.standalone_sample or ctx.hooks.standalone_evaluate is None:
        return
    sample = standalone_sample(ctx.state.fine, ctx.settings.standalone_sample)
    runner = ctx.runner("standalone", ctx.hooks.standalone_evaluate)
    ctx.bar.start(len(sample), "stand-alone")
    runner.run([Proposal(levels=tuple(r.levels), ops=tuple(r.ops), epochs=rungs.epochs(rungs.top),
                         generation=r.index, width_multiplier=width) for r in sample])
    ctx.bar.close()
    ctx.state.standalone = runner.records


# added to the search seed for the noise check's second training of a candidate
REPEAT_SEED_OFFSET = 1


def repeat_stage(ctx: StageContext, stage: str, sample: Sequence[CandidateRecord], evaluate: Evaluate, *,
                 epochs: int | None, width: float | None = None) -> list[CandidateRecord]:
    """Train `sample` again with a second seed (the noise check, noise.py); the records go to
    `state.<stage>`."""
    runner = ctx.runner(stage, evaluate)
    seed = ctx.settings.seed + REPEAT_SEED_OFFSET
    ctx.bar.start(len(sample), f"{stage.replace('_', ' ')}s")
    runner.run([Proposal(levels=tuple(r.levels), ops=tuple(r.ops), epochs=epochs, seed=seed, rung=r.rung,
                         candidate=r.candidate, generation=r.index,
                         width_multiplier=r.width_multiplier if r.width_multiplier is not None else width)
                for r in sample])
    ctx.bar.close()
    setattr(ctx.state, stage, runner.records)
    ctx.save()
    return runner.records
