"""`run_search`: both stages, state, report, plots, and the winner into the plans.

`search_core` is the search without training or plans: it takes `SearchHooks`
(coarse evaluator, supernet trainer, fine evaluator factory, stand-alone evaluator), so
tests drive the whole flow -- clustering, the asynchronous rung schedule, evolution,
shared trial files, resume, report, plots -- with fake evaluators. `run_search` builds
the real hooks from the plans and `training.api`.

Every worker (torchrun rank, or a process started later with `join=True`) runs
`search_core` on the same folder; the main worker (rank 0, not joined) also trains the
supernet and writes state, report and plots. See `optuna_trials.py` for how workers share
work (Optuna trials in the journal file `optuna_journal.log` in the search folder, or the
`storage` URL).
"""

from __future__ import annotations

import datetime
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from c2fnas_auto.errors import C2FNASError
from c2fnas_auto.search.asha import CoarseView, Rungs, best_candidate, check_rungs, run_coarse
from c2fnas_auto.search.clustering import Clustering, distance_matrix, k_medoids
from c2fnas_auto.search.distributed import DistContext, init_distributed
from c2fnas_auto.search.evolution import fine_evolution, propose_topology
from c2fnas_auto.search.report import plot_progress, plot_ranking, ranking_checks, write_report
from c2fnas_auto.search.runner import CandidateRunner, Evaluate, Proposal, record_from_result, timed
from c2fnas_auto.search.state import CandidateRecord, SearchState, SearchStateError, open_state
from c2fnas_auto.search.stop import StopFlag
from c2fnas_auto.search.jobs import WorkerOptions
from c2fnas_auto.search.optuna_trials import OptunaTrials, clear_search, has_results
from c2fnas_auto.search.storage import default_url, shown
from c2fnas_auto.utils.io import remove_stale_temporaries

SEARCH_DIR = "search"  # the old location under the preprocessed task (read on --continue)
STATE_FILE = "state.json"
REPORT_FILE = "report.json"
PROGRESS_PNG = "search_progress.png"
RANKING_PNG = "search_ranking.png"
GENOTYPE_PNG = "genotype.png"
GENOTYPE_FILE = "genotype.json"
SUPERNET_FILE = "supernet.pth"
TRIALS_DIR = "trials"  # the per-candidate files of the engine before Optuna (removed by --overwrite)


# how candidates run (nas/execution.py), not which ones are proposed: like the device, they
# may differ between workers and across a resume, so the resume check leaves them out
EXECUTION_FIELDS = ("precision", "compile", "channels_last")


@dataclass
class SearchSettings:
    """Every option that changes the search's decisions (the device and workers do not), and the
    execution options of its trainings and scorings (`EXECUTION_FIELDS`).
    Defaults: about one GPU-day on one modern GPU, see documentation/search.md."""

    coarse_candidates: int = 81  # topologies trained at rung 0
    min_epochs: int = 4  # rung 0 budget; rung r trains min_epochs * eta**r epochs
    eta: int = 3
    rungs: int = 3
    clusters: int = 16
    population: int = 16
    fine_epochs: int = 500
    supernet_warmup: float = 0.5  # share of supernet steps with one op for all cells, before cell-wise paths
    generations: int = 20
    iters_per_epoch: int = 100
    seed: int = 0
    coarse_op: str = "3d"
    max_gflops: float | None = None
    tournament: int = 4
    standalone_sample: int = 6  # fine-stage op choices also trained stand-alone (0: off)
    heldout_fraction: float = 0.2  # carved from the training cases when there is no labelled imagesTs
    fold: int = 0
    precision: str | None = None  # fp32 / bf16 / fp16; None: the device's default (fp16 AMP on CUDA, fp32 on CPU)
    compile: bool = False  # torch.compile each candidate (the supernet cell by cell)
    channels_last: bool | None = None

    def validate(self) -> "SearchSettings":
        from c2fnas_auto.nas.execution import PRECISIONS
        from c2fnas_auto.nas.genotype import OPS

        for name in ("coarse_candidates", "clusters", "population", "generations", "iters_per_epoch", "tournament"):
            if getattr(self, name) < 1:
                raise C2FNASError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be at least 1")
        for name in ("fine_epochs", "standalone_sample"):
            if getattr(self, name) < 0:
                raise C2FNASError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be >= 0")
        check_rungs(self.min_epochs, self.eta, self.rungs)
        if not 0.0 <= self.supernet_warmup <= 1.0:
            raise C2FNASError(f"--supernet-warmup {self.supernet_warmup}: must be in [0, 1]")
        if not 0.0 <= self.heldout_fraction < 1.0:
            raise C2FNASError(f"--heldout-fraction {self.heldout_fraction}: must be in [0, 1)")
        if self.coarse_op not in OPS:
            raise C2FNASError(f"--coarse-op {self.coarse_op!r}: expected one of {', '.join(OPS)}")
        if self.max_gflops is not None and self.max_gflops <= 0:
            raise C2FNASError(f"--max-gflops {self.max_gflops}: must be positive")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise C2FNASError(f"--precision {self.precision!r}: expected one of {', '.join(PRECISIONS)}")
        return self

    def schedule(self) -> Rungs:
        return check_rungs(self.min_epochs, self.eta, self.rungs)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))

    def decisions(self) -> dict[str, Any]:
        """The settings a resumed or joining worker must share (the execution options need not)."""
        return {k: v for k, v in self.to_dict().items() if k not in EXECUTION_FIELDS}


@dataclass
class SearchHooks:
    """The things that touch training; everything else is the same for fakes.
    Evaluators read the epochs to train from `Proposal.epochs` (coarse rung, stand-alone)."""

    coarse_evaluate: Evaluate
    train_supernet: Callable[[Sequence[int]], tuple[Any, dict]]  # levels -> (supernet, info)
    fine_evaluator: Callable[[Any], Evaluate]  # supernet -> evaluate
    standalone_evaluate: Evaluate | None = None  # trains an op choice from scratch (None: no tau check)
    describe: dict[str, Any] | None = None


@dataclass
class Topologies:
    topologies: list[tuple[int, ...]]
    neighbours: Callable[[tuple[int, ...]], Sequence[tuple[int, ...]]]
    distance: Callable[[tuple[int, ...], tuple[int, ...]], float]
    num_cells: int = 12
    op_choices: tuple[str, ...] = ("2d", "3d", "p3d")


def default_topologies() -> Topologies:
    from c2fnas_auto.nas.genotype import OPS
    from c2fnas_auto.nas.topology import enumerate_topologies, topology_distance, topology_neighbours

    return Topologies([tuple(t) for t in enumerate_topologies()],
                      lambda t: [tuple(n) for n in topology_neighbours(tuple(t))],
                      topology_distance, 12, tuple(OPS))


class _Progress:
    """tqdm over candidates plus one printed line per candidate this worker finished."""

    def __init__(self, bars: bool, main: bool, lines: bool = True) -> None:
        self.bars = bars and main
        self.lines = lines
        self.bar = None

    def start(self, total: int, desc: str) -> None:
        if not self.bars:
            return
        from tqdm import tqdm

        self.close()
        self.bar = tqdm(total=total, desc=desc, unit="cand", file=sys.stderr, dynamic_ncols=True)

    def record(self, r: CandidateRecord, replayed: bool) -> None:
        if self.bar is not None and r.status == "done" and self.bar.n < self.bar.total:
            self.bar.update(1)
        if replayed or not self.lines:
            return
        score = "-" if r.score is None else f"{r.score:.4f}"
        gflops = "-" if r.flops is None else f"{r.flops / 1e9:.1f}"
        where = {"coarse": f"cand {r.candidate} rung {r.rung} ({r.epochs} ep) cluster {r.cluster}",
                 "fine": f"gen {r.generation}", "standalone": f"{r.epochs} ep"}[r.stage]
        tag = r.stage if r.stage == "coarse" else f"{r.stage} #{r.index}"
        line = (f"[{tag} {where}] levels {''.join(map(str, r.levels))} ops {','.join(r.ops)} "
                f"{r.status} score {score} GFLOPs {gflops} {r.seconds:.1f}s {r.reason}").rstrip()
        (self.bar.write(line) if self.bar is not None else print(line, flush=True))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


_DISTANCES: dict[tuple, Any] = {}


def _distances(topo: Topologies):
    """The pairwise distance matrix, computed once per process (about a second for 1486)."""
    key = (topo.distance, tuple(topo.topologies))
    if key not in _DISTANCES:
        _DISTANCES.clear()
        _DISTANCES[key] = distance_matrix(topo.topologies, topo.distance)
    return _DISTANCES[key]


def _cluster(state: SearchState, topo: Topologies, settings: SearchSettings) -> Clustering:
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
    """n distinct scored op choices spread evenly over the fitness ranking (best and worst included)."""
    done = sorted((r for r in records if r.status == "done" and r.score is not None), key=lambda r: (-r.score, r.index))
    if n <= 0 or not done:
        return []
    if n >= len(done):
        return done
    if n == 1:
        return done[:1]
    return [done[round(i * (len(done) - 1) / (n - 1))] for i in range(n)]


class _Saver:
    """Writes state.json (main worker only): at once when called, at most every
    `interval` seconds through `soon()` after each candidate. The trial files are already
    the durable record; a state.json a few seconds old after a hard kill is rebuilt on resume."""

    def __init__(self, state: SearchState, path: Path, main: bool, interval: float = 2.0) -> None:
        self.state, self.path, self.main, self.interval = state, path, main, interval
        self.last = 0.0

    def __call__(self) -> None:
        if self.main:
            self.state.save(self.path)
            self.last = time.monotonic()

    def due(self) -> bool:
        return self.main and time.monotonic() - self.last >= self.interval

    def soon(self) -> None:
        if self.due():
            self()


def _open(search_dir: Path, state_path: Path, task_name: str, settings: SearchSettings, resume: bool,
          overwrite: bool, join: bool, url: str) -> dict[str, Any]:
    """The state to work on as a dict (or {"error": ...}); the main worker clears an
    overwritten search first."""
    try:
        if join:
            if not state_path.is_file():
                raise SearchStateError(f"{state_path}: no search to join (start it without --join first)")
            return open_state(state_path, task_name, settings.decisions(), True, False).to_dict()
        remove_stale_temporaries(search_dir)  # left by a writer killed mid-rename
        if not (resume or overwrite or state_path.exists()) and has_results(url, task_name):
            raise SearchStateError(f"{shown(url)} holds results of an earlier search of {task_name}: use --continue "
                                   "to resume it or --overwrite to start again")
        old = search_dir / TRIALS_DIR / "results"
        if resume and old.is_dir() and any(old.iterdir()) and not has_results(url, task_name):
            raise SearchStateError(f"{old.parent} holds trial files of the engine before Optuna, which this version "
                                   "does not read: finish that search with the version that started it, or "
                                   "use --overwrite to search again")
        if overwrite and not resume:
            clear_search(url, task_name)  # first: a storage that cannot be opened leaves the folder as it was
            (search_dir / SUPERNET_FILE).unlink(missing_ok=True)
            shutil.rmtree(search_dir / TRIALS_DIR, ignore_errors=True)
        return open_state(state_path, task_name, settings.decisions(), resume, overwrite).to_dict()
    except C2FNASError as exc:
        return {"error": str(exc)}


def _check_same(state: SearchState, field_name: str, new: dict[str, Any], what: str, state_path: Path) -> None:
    """Store `new` in a fresh state; an unfinished one resumed under a different value refuses."""
    new = json.loads(json.dumps(new or {}))  # same JSON types as the stored copy
    old = getattr(state, field_name)
    if not old:
        setattr(state, field_name, new)
    elif new and not state.finished and new != old:
        changed = sorted(k for k in set(new) | set(old) if new.get(k) != old.get(k))
        raise SearchStateError(f"{state_path}: the {what} changed since this search started ({', '.join(changed)}); "
                               "use --overwrite to search again")


def _wait_for_supernet(store: OptunaTrials, stop: StopFlag) -> dict[str, Any]:
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


def search_core(search_dir: Path, task_name: str, settings: SearchSettings, hooks: SearchHooks,
                resume: bool = False, overwrite: bool = False, dist: DistContext | None = None,
                progress: bool = True, topologies: Topologies | None = None, lines: bool = True,
                plans_info: dict[str, Any] | None = None, heldout: dict[str, Any] | None = None,
                join: bool = False, stop: StopFlag | None = None, workers: WorkerOptions | None = None,
                worker_id: str | None = None, storage: str | None = None) -> SearchState:
    """Clustering -> coarse rungs (ASHA + evolution) -> supernet -> fine evolution ->
    stand-alone check; every finished candidate is published at once.

    `plans_info` (patch, batch, network, memory budget the candidates are trained at) and
    `heldout` (the cases kept out) are stored with a new state; resuming an unfinished
    state under different ones refuses, because its scores would no longer compare.
    `join=True`: a worker added to a running search (never the main worker).
    `stop.check()` runs after every candidate; it raises `SearchStopped` after a signal.
    `storage`: an Optuna storage shared by the workers, a database URL or a journal file path
    (default: the journal file in `search_dir`, which nodes sharing that folder can use too).
    """
    settings.validate()
    workers = (workers or WorkerOptions()).validate()
    rungs = settings.schedule()
    if resume and overwrite:
        raise C2FNASError("--continue and --overwrite contradict each other: choose one")
    if join and overwrite:
        raise C2FNASError("--join and --overwrite contradict each other: a joining worker never restarts a search")
    dist = dist or DistContext()
    main = dist.is_main and not join
    stop = stop or StopFlag()
    topo = topologies or default_topologies()
    search_dir = Path(search_dir)
    state_path = search_dir / STATE_FILE
    url = storage or default_url(search_dir)
    payload = _open(search_dir, state_path, task_name, settings, resume, overwrite, join, url) if (main or join) else None
    if not join:
        payload = dist.broadcast(payload)  # every rank starts once rank 0 has opened (or cleared) the folder
    if "error" in payload:
        raise C2FNASError(payload["error"])
    state = SearchState.from_dict(payload, state_path)
    _check_same(state, "plans", plans_info or {}, "plans", state_path)
    _check_same(state, "heldout", heldout or {}, "held-out set", state_path)

    save = _Saver(state, state_path, main)

    if state.finished:  # replay: nothing is trained or scored again
        if main:
            _write_outputs(search_dir, state, hooks)
        return state

    store = OptunaTrials(url, task_name, worker_id, workers).start()
    bar = _Progress(progress, main, lines)
    try:
        if main:
            store.mark("main", {"worker": store.worker_id}, replace=True)
        clustering = _cluster(state, topo, settings)
        save()
        levels, coarse_best = _coarse_stage(store, state, settings, rungs, hooks, topo, clustering, dist, bar, stop,
                                            save, main)
        supernet = _supernet(store, state, hooks, levels, save, main, stop)
        fine_best = _fine_stage(store, state, settings, topo, hooks.fine_evaluator(supernet), levels, dist, bar,
                                stop, save)
        if settings.standalone_sample and hooks.standalone_evaluate is not None:
            sample = standalone_sample(state.fine, settings.standalone_sample)
            runner = CandidateRunner(store, "standalone", "s", hooks.standalone_evaluate, dist.rank, bar.record,
                                     None, stop.check)

            def standalone_finished() -> None:
                if save.main:  # the others' state is never written: no need to read the trials
                    state.standalone = runner.partial()
                    save.soon()

            runner.on_finish = standalone_finished
            bar.start(len(sample), "stand-alone")
            runner.run([Proposal(levels=tuple(r.levels), ops=tuple(r.ops), epochs=rungs.epochs(rungs.top),
                                 generation=r.index) for r in sample])
            bar.close()
            state.standalone = runner.records
        state.ranking = ranking_checks(state)
        state.winner = {"levels": list(fine_best.levels), "ops": list(fine_best.ops), "fine_score": fine_best.score,
                        "coarse_score": coarse_best.score, "coarse_rung": coarse_best.rung,
                        "coarse_epochs": coarse_best.epochs, "coarse_candidate": coarse_best.candidate,
                        "coarse_index": coarse_best.index, "fine_index": fine_best.index, "params": fine_best.params,
                        "flops": fine_best.flops, "training_bytes": fine_best.training_bytes}
        state.finished = True
        save()
        if main:
            _write_outputs(search_dir, state, hooks)
        return state
    except BaseException:
        save()  # the in-memory state holds every candidate finished so far (stop signal, crash)
        raise
    finally:
        bar.close()
        store.stop()


def _coarse_stage(store: OptunaTrials, state: SearchState, settings: SearchSettings, rungs: Rungs, hooks: SearchHooks,
                  topo: Topologies, clustering: Clustering, dist: DistContext, bar: _Progress, stop: StopFlag,
                  save: _Saver, main: bool) -> tuple[list[int], CandidateRecord]:
    t0 = time.perf_counter()

    def propose(n: int, view: CoarseView) -> dict[str, Any] | None:
        history = [(c, tuple(p["levels"]), view.rung_scores(0).get(c)) for c, p in sorted(view.candidates.items())]
        i = propose_topology(n, topo.topologies, clustering, topo.neighbours, history, settings.population,
                             settings.tournament, settings.seed)
        if i is None:
            return None
        return {"levels": list(topo.topologies[i]), "ops": [settings.coarse_op] * topo.num_cells,
                "cluster": clustering.labels[i]}

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


def _supernet(store: OptunaTrials, state: SearchState, hooks: SearchHooks, levels: list[int],
              save: _Saver, main: bool, stop: StopFlag) -> Any:
    """The main worker trains (or loads) the supernet; the others wait for it, then load it."""
    if main:
        supernet, info = hooks.train_supernet(levels)
        state.supernet = {"levels": levels, **{k: v for k, v in info.items() if k != "loaded"}}
        save()
        store.mark("supernet", {"levels": levels})
        stop.check()
        return supernet
    mark = _wait_for_supernet(store, stop)
    if list(mark["levels"]) != list(levels):
        raise SearchStateError(f"{store.folder}: the supernet was trained on {mark['levels']} but this worker's "
                               f"coarse winner is {levels}; use --overwrite")
    return hooks.train_supernet(levels)[0]


def _fine_stage(store: OptunaTrials, state: SearchState, settings: SearchSettings, topo: Topologies,
                evaluate: Evaluate, levels: list[int], dist: DistContext, bar: _Progress, stop: StopFlag,
                save: _Saver) -> CandidateRecord:
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
        raise C2FNASError(f"{store.folder}: no op choice met the constraints (e.g. --max-gflops "
                          f"{settings.max_gflops}); relax them and rerun with --overwrite")
    save()
    return fine.best


def _write_outputs(search_dir: Path, state: SearchState, hooks: SearchHooks,
                   extra: dict[str, Any] | None = None) -> None:
    report_extra = dict(hooks.describe or {})
    report_extra.update(extra or {})
    write_report(search_dir / REPORT_FILE, state, SearchSettings().to_dict(), report_extra)
    plot_progress(state, search_dir / PROGRESS_PNG)
    plot_ranking(state, search_dir / RANKING_PNG)


# --------------------------------------------------------------------------- real search
def _rank_device(device: str | None, dist: DistContext):
    import torch

    from c2fnas_auto.utils.device import resolve_device

    dev = resolve_device(device)
    if dev.type == "cuda" and dist.active:
        dev = torch.device("cuda", dist.local_rank)
    return dev


def real_hooks(plans: Any, preprocessed: Path, settings: SearchSettings, device: Any,
               search_dir: Path, heldout: Any, progress: bool = True) -> SearchHooks:
    """Coarse: `fit` from scratch + `score_cases`; fine: supernet with shared weights;
    stand-alone: an op choice trained from scratch like a coarse candidate. All train on
    the fold's training cases and score on its selection cases, held-out cases removed."""
    from c2fnas_auto.search.coarse import TrainingContext, make_coarse_evaluator
    from c2fnas_auto.search.fine import make_fine_evaluator, train_supernet
    from c2fnas_auto.search.heldout import search_cases

    train_ids, val_ids = search_cases(preprocessed, settings.fold, heldout)
    ctx = TrainingContext(plans=plans, preprocessed_dir=preprocessed, train_ids=list(train_ids),
                          val_ids=list(val_ids), device=device, seed=settings.seed,
                          iters_per_epoch=settings.iters_per_epoch, precision=settings.precision,
                          compile=settings.compile, channels_last=settings.channels_last)
    evaluate = make_coarse_evaluator(ctx, settings.min_epochs)
    return SearchHooks(
        coarse_evaluate=evaluate,
        train_supernet=lambda levels: train_supernet(levels, ctx, settings.fine_epochs, search_dir / SUPERNET_FILE,
                                                     progress=progress, warmup=settings.supernet_warmup),
        fine_evaluator=lambda supernet: make_fine_evaluator(supernet, ctx, settings.max_gflops),
        standalone_evaluate=evaluate,
        describe={"device": str(device), "execution": ctx.answer_fields(), "fold": settings.fold,
                  "num_train_cases": len(train_ids),
                  "num_selection_cases": len(val_ids), "selection_cases": list(val_ids)})


def winner_genotype(state: SearchState, plans: Any, settings: SearchSettings):
    """The winner as a Genotype carrying its provenance (DESIGN §4 genotype JSON)."""
    from c2fnas_auto.nas.genotype import Genotype

    w = state.winner or {}
    provenance = {
        "source": "c2fnas_search",
        "source_task": state.task_name,
        "gpu_memory_gb": state.plans.get("gpu_memory_gb", float(plans.gpu_memory_gb)),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "fine_score": w.get("fine_score"),
        "coarse_score": w.get("coarse_score"),
        "coarse_epochs": w.get("coarse_epochs"),
        "heldout": {k: state.heldout.get(k) for k in ("source", "case_ids", "seed", "fraction")},
        "searched_patch_size": state.plans.get("patch_size", list(plans.patch_size)),
        "searched_batch_size": state.plans.get("batch_size", int(plans.batch_size)),
        "settings": settings.to_dict(),
    }
    return Genotype(levels=w["levels"], ops=w["ops"], provenance=provenance).validate()


def write_into_plans(plans_path: Path, genotype: Any) -> tuple[Any, str]:
    """Put the genotype into the source task's plans with patch/batch refitted to its budget."""
    from c2fnas_auto.planning import planner
    from c2fnas_auto.planning.plans import Plans

    plans = Plans.load(plans_path)
    refit = getattr(planner, "refit_plans", None)
    if refit is not None:
        new, how = refit(plans, genotype), "patch/batch refitted by planning.planner.refit_plans"
    else:  # planner without refit: keep patch/batch, say so in the report
        new = plans.copy()
        new.genotype = genotype
        how = "planner has no refit_plans: patch/batch kept from the search plans"
    new.save(plans_path)
    return new, how


def _adopt_old_folder(task_name: str, search_dir: Path) -> str:
    """On --continue, move a search left at the old location (preprocessed/<task>/search)
    to the results folder; returns a note for the report ('' when nothing moved)."""
    from c2fnas_auto.paths import preprocessed_dir

    old = preprocessed_dir(task_name) / SEARCH_DIR
    if (search_dir / STATE_FILE).exists() or not (old / STATE_FILE).is_file():
        return ""
    search_dir.parent.mkdir(parents=True, exist_ok=True)
    if search_dir.exists():
        for item in old.iterdir():
            shutil.move(str(item), str(search_dir / item.name))
        old.rmdir()
    else:
        shutil.move(str(old), str(search_dir))
    note = f"moved the search state from {old} to {search_dir}"
    print(f"c2fnas_search: {note}", file=sys.stderr)
    return note


def run_search(task: str | int, settings: SearchSettings, device: str | None = None, resume: bool = False,
               overwrite: bool = False, progress: bool = True, join: bool = False, stop: StopFlag | None = None,
               workers: WorkerOptions | None = None, storage: str | None = None) -> SearchState:
    """`c2fnas_search -t TASK`: search on the task's fold 0 (held-out cases removed), write
    the winner into its plans.json and `search_results_dir(task)/genotype.json`; returns
    the final state. Several workers: torchrun ranks, and/or later processes with `join`."""
    from c2fnas_auto.nas.execution import check_precision
    from c2fnas_auto.nas.plot import plot_genotype
    from c2fnas_auto.paths import preprocessed_dir, search_results_dir, task_name_from_id
    from c2fnas_auto.planning.pipeline import PLANS_FILE
    from c2fnas_auto.planning.plans import Plans
    from c2fnas_auto.preprocessing.provenance import check_arrays_match_plans
    from c2fnas_auto.preprocessing.storage import list_dataset_cases
    from c2fnas_auto.search.heldout import heldout_cases

    settings.validate()
    task_name = task_name_from_id(task)
    pre = preprocessed_dir(task_name)
    plans_path = pre / PLANS_FILE
    if not plans_path.is_file():
        raise C2FNASError(f"{plans_path}: no plans for task {task} (run c2fnas_plan_and_preprocess -t {task} first)")
    plans = Plans.load(plans_path)
    check_arrays_match_plans(pre, plans, task_name, list_dataset_cases(pre))  # never search on stale arrays
    search_dir = search_results_dir(task_name)
    dist = DistContext() if join else init_distributed("cuda" if (device or "").startswith("cuda") else "cpu")
    moved = _adopt_old_folder(task_name, search_dir) if (resume and dist.is_main and not join) else ""
    try:
        dev = _rank_device(device, dist)
        check_precision(settings.precision, dev)  # e.g. fp16 on a CPU: refused before anything runs
        heldout = heldout_cases(task_name, pre, settings.heldout_fraction, settings.seed)
        hooks = real_hooks(plans, pre, settings, dev, search_dir, heldout, progress=progress and dist.is_main)
        plans_info = {"patch_size": list(plans.patch_size), "batch_size": int(plans.batch_size),
                      "network": plans.network.to_dict(), "gpu_memory_gb": float(plans.gpu_memory_gb)}
        state = search_core(search_dir, task_name, settings, hooks, resume=resume, overwrite=overwrite, dist=dist,
                            progress=progress, plans_info=plans_info, heldout=heldout.to_dict(), join=join,
                            stop=stop, workers=workers, storage=storage)
        if dist.is_main and not join:
            genotype = winner_genotype(state, plans, settings)
            genotype.save(search_dir / GENOTYPE_FILE)
            new_plans, how = write_into_plans(plans_path, genotype)
            plot_genotype(genotype, search_dir / GENOTYPE_PNG, cell_style=plans.network.cell_style,
                          title_extra=f"{task_name}: fine Dice {state.winner['fine_score']:.3f}")
            extra: dict[str, Any] = {"plans": {"file": str(plans_path), "refit": how,
                                               "patch_size": list(new_plans.patch_size),
                                               "batch_size": int(new_plans.batch_size),
                                               "estimated_memory_gb": float(new_plans.estimated_memory_gb)},
                                     "genotype": genotype.to_dict(), "genotype_file": str(search_dir / GENOTYPE_FILE),
                                     "world_size": dist.world_size}
            if moved:
                extra["moved_from_old_location"] = moved
            _write_outputs(search_dir, state, hooks, extra)
        return state
    finally:
        dist.close()
