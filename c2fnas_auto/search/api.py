"""`run_search`: both stages, state, report, plots, and the winner into the plans.

`search_core` is the search without training or plans: it takes `SearchHooks`
(coarse evaluator, supernet trainer, fine evaluator factory), so tests drive the whole
flow -- clustering, evolution, state, resume, report, plots -- with fake evaluators.
`run_search` builds the real hooks from the plans and `training.api`.
"""

from __future__ import annotations

import datetime
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from c2fnas_auto.errors import C2FNASError
from c2fnas_auto.search.clustering import Clustering, distance_matrix, k_medoids
from c2fnas_auto.search.distributed import DistContext, init_distributed
from c2fnas_auto.search.evolution import coarse_evolution, fine_evolution
from c2fnas_auto.search.report import plot_progress, write_report
from c2fnas_auto.search.runner import CandidateRunner, Evaluate
from c2fnas_auto.search.state import CandidateRecord, SearchState, SearchStateError, open_state
from c2fnas_auto.utils.io import remove_stale_temporaries

SEARCH_DIR = "search"
STATE_FILE = "state.json"
REPORT_FILE = "report.json"
PROGRESS_PNG = "search_progress.png"
GENOTYPE_PNG = "genotype.png"
SUPERNET_FILE = "supernet.pth"


@dataclass
class SearchSettings:
    """Every option that changes the search's decisions (the device does not).
    Defaults: about one GPU-day on one modern GPU, see documentation/search.md."""

    coarse_candidates: int = 64
    coarse_epochs: int = 20
    clusters: int = 16
    population: int = 16
    fine_epochs: int = 500
    generations: int = 20
    iters_per_epoch: int = 100
    seed: int = 0
    coarse_op: str = "3d"
    max_gflops: float | None = None
    tournament: int = 4
    children_per_round: int = 4
    fold: int = 0

    def validate(self) -> "SearchSettings":
        from c2fnas_auto.nas.genotype import OPS

        for name in ("coarse_candidates", "clusters", "population", "generations", "iters_per_epoch",
                     "tournament", "children_per_round"):
            if getattr(self, name) < 1:
                raise C2FNASError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be at least 1")
        for name in ("coarse_epochs", "fine_epochs"):
            if getattr(self, name) < 0:
                raise C2FNASError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be >= 0")
        if self.coarse_op not in OPS:
            raise C2FNASError(f"--coarse-op {self.coarse_op!r}: expected one of {', '.join(OPS)}")
        if self.max_gflops is not None and self.max_gflops <= 0:
            raise C2FNASError(f"--max-gflops {self.max_gflops}: must be positive")
        return self

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))


@dataclass
class SearchHooks:
    """The three things that touch training; everything else is the same for fakes."""

    coarse_evaluate: Evaluate
    train_supernet: Callable[[Sequence[int]], tuple[Any, dict]]  # levels -> (supernet, info)
    fine_evaluator: Callable[[Any], Evaluate]  # supernet -> evaluate
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
    """tqdm over candidates plus one printed line per newly finished candidate."""

    def __init__(self, bars: bool, dist: DistContext, lines: bool = True) -> None:
        self.bars = bars and dist.is_main
        self.lines = lines and dist.is_main
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
        where = f"cluster {r.cluster}" if r.stage == "coarse" else f"gen {r.generation}"
        line = (f"[{r.stage} #{r.index} {where}] levels {''.join(map(str, r.levels))} ops {','.join(r.ops)} "
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
    """Cluster once and keep the result in the state (resumes reuse it)."""
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


def _replay_only(p: Any) -> dict[str, Any]:
    raise SearchStateError(f"search state is marked finished but has no record for {p}; use --overwrite")


def search_core(search_dir: Path, task_name: str, settings: SearchSettings, hooks: SearchHooks,
                resume: bool = False, overwrite: bool = False, dist: DistContext | None = None,
                progress: bool = True, topologies: Topologies | None = None, lines: bool = True,
                plans_info: dict[str, Any] | None = None) -> SearchState:
    """Clustering -> coarse evolution -> supernet -> fine evolution, state after every candidate.

    `plans_info` (patch, batch, network, memory budget the candidates are trained at) is
    stored with a new state; resuming an unfinished state under different plans refuses,
    because its scores would no longer compare.
    """
    settings.validate()
    if resume and overwrite:
        raise C2FNASError("--continue and --overwrite contradict each other: choose one")
    dist = dist or DistContext()
    topo = topologies or default_topologies()
    search_dir = Path(search_dir)
    state_path = search_dir / STATE_FILE
    payload: dict[str, Any] | None = None
    if dist.is_main:
        try:
            remove_stale_temporaries(search_dir)  # left by a writer killed mid-rename
            if overwrite and not resume:
                (search_dir / SUPERNET_FILE).unlink(missing_ok=True)
            payload = open_state(state_path, task_name, settings.to_dict(), resume, overwrite).to_dict()
        except C2FNASError as exc:
            payload = {"error": str(exc)}
    payload = dist.broadcast(payload)  # every rank replays from the same stored records
    if "error" in payload:
        raise C2FNASError(payload["error"])
    state = SearchState.from_dict(payload, state_path)
    info = json.loads(json.dumps(plans_info or {}))  # same JSON types as the stored copy
    if not state.plans:
        state.plans = info
    elif info and not state.finished and info != state.plans:
        changed = sorted(k for k in set(info) | set(state.plans) if info.get(k) != state.plans.get(k))
        raise SearchStateError(f"{state_path}: the plans changed since this search started ({', '.join(changed)}); "
                               "use --overwrite to search again under the new plans")

    def save() -> None:
        if dist.is_main:
            state.save(state_path)

    bar = _Progress(progress, dist, lines)
    clustering = _cluster(state, topo, settings)
    save()

    # ---- coarse stage
    runner = CandidateRunner(state, "coarse", hooks.coarse_evaluate, save, dist, bar.record)
    bar.start(settings.coarse_candidates, "coarse")
    coarse = coarse_evolution(topo.topologies, clustering, topo.neighbours, settings.coarse_op, topo.num_cells,
                              runner.run, budget=settings.coarse_candidates, population=settings.population,
                              tournament=settings.tournament, children_per_round=settings.children_per_round,
                              seed=settings.seed)
    bar.close()
    if coarse.best is None:
        raise C2FNASError(f"{state_path}: no coarse candidate could be trained (all skipped: "
                          f"{coarse.records[-1].reason if coarse.records else 'none proposed'})")
    levels = list(coarse.best.levels)

    # ---- supernet (rank 0 trains, the others load its checkpoint); a finished search only
    # replays its records, so it needs no supernet (its plans may have been refitted since)
    if state.finished:
        fine_evaluate: Evaluate = _replay_only
    else:
        if dist.is_main:
            supernet, sinfo = hooks.train_supernet(levels)
            state.supernet = {"levels": levels, **{k: v for k, v in sinfo.items() if k != "loaded"}}
            save()
        dist.barrier()
        if not dist.is_main:
            supernet, _ = hooks.train_supernet(levels)
        fine_evaluate = hooks.fine_evaluator(supernet)

    # ---- fine stage
    runner_f = CandidateRunner(state, "fine", fine_evaluate, save, dist, bar.record)
    p = settings.population
    bar.start(p + (settings.generations - 1) * (p - max(1, p // 2)), "fine")
    fine = fine_evolution(levels, topo.op_choices, runner_f.run, population=settings.population,
                          generations=settings.generations, seed=settings.seed + 1,
                          start_ops=[settings.coarse_op] * topo.num_cells)
    bar.close()
    state.fine_generations = fine.generations
    best = fine.best
    if best is None:
        raise C2FNASError(f"{state_path}: no op choice met the constraints (e.g. --max-gflops "
                          f"{settings.max_gflops}); relax them and rerun with --overwrite")
    state.winner = {"levels": list(best.levels), "ops": list(best.ops), "fine_score": best.score,
                    "coarse_score": coarse.best.score, "coarse_index": coarse.best.index,
                    "fine_index": best.index, "params": best.params, "flops": best.flops,
                    "training_bytes": best.training_bytes}
    state.finished = True
    save()
    if dist.is_main:
        write_report(search_dir / REPORT_FILE, state, SearchSettings().to_dict(), hooks.describe)
        plot_progress(state, search_dir / PROGRESS_PNG)
    return state


# --------------------------------------------------------------------------- real search
def _rank_device(device: str | None, dist: DistContext):
    import torch

    from c2fnas_auto.utils.device import resolve_device

    dev = resolve_device(device)
    if dev.type == "cuda" and dist.active:
        dev = torch.device("cuda", dist.local_rank)
    return dev


def real_hooks(plans: Any, preprocessed: Path, settings: SearchSettings, device: Any,
               search_dir: Path, progress: bool = True) -> SearchHooks:
    """Coarse: `fit` from scratch + `score_cases`; fine: supernet with shared weights."""
    from c2fnas_auto.search.coarse import TrainingContext, make_coarse_evaluator
    from c2fnas_auto.search.fine import make_fine_evaluator, train_supernet
    from c2fnas_auto.training.splits import fold_case_ids

    train_ids, val_ids = fold_case_ids(preprocessed, settings.fold)
    if not train_ids or not val_ids:
        raise C2FNASError(f"{preprocessed}: fold {settings.fold} needs training and validation cases "
                          f"(has {len(train_ids)} / {len(val_ids)})")
    ctx = TrainingContext(plans=plans, preprocessed_dir=preprocessed, train_ids=list(train_ids),
                          val_ids=list(val_ids), device=device, seed=settings.seed,
                          iters_per_epoch=settings.iters_per_epoch)
    return SearchHooks(
        coarse_evaluate=make_coarse_evaluator(ctx, settings.coarse_epochs),
        train_supernet=lambda levels: train_supernet(levels, ctx, settings.fine_epochs, search_dir / SUPERNET_FILE,
                                                     progress=progress),
        fine_evaluator=lambda supernet: make_fine_evaluator(supernet, ctx, settings.max_gflops),
        describe={"device": str(device), "fold": settings.fold, "num_train_cases": len(train_ids),
                  "num_val_cases": len(val_ids)})


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


def run_search(task: str | int, settings: SearchSettings, device: str | None = None, resume: bool = False,
               overwrite: bool = False, progress: bool = True) -> SearchState:
    """`c2fnas_search -t TASK`: search on the task's preprocessed fold 0 and write the winner
    into its plans.json; returns the final state."""
    from c2fnas_auto.nas.plot import plot_genotype
    from c2fnas_auto.paths import preprocessed_dir, task_name_from_id
    from c2fnas_auto.planning.pipeline import PLANS_FILE
    from c2fnas_auto.planning.plans import Plans

    settings.validate()
    task_name = task_name_from_id(task)
    pre = preprocessed_dir(task_name)
    plans_path = pre / PLANS_FILE
    if not plans_path.is_file():
        raise C2FNASError(f"{plans_path}: no plans for task {task} (run c2fnas_plan_and_preprocess -t {task} first)")
    plans = Plans.load(plans_path)
    search_dir = pre / SEARCH_DIR
    dist = init_distributed("cuda" if (device or "").startswith("cuda") else "cpu")
    try:
        dev = _rank_device(device, dist)
        hooks = real_hooks(plans, pre, settings, dev, search_dir, progress=progress and dist.is_main)
        plans_info = {"patch_size": list(plans.patch_size), "batch_size": int(plans.batch_size),
                      "network": plans.network.to_dict(), "gpu_memory_gb": float(plans.gpu_memory_gb)}
        state = search_core(search_dir, task_name, settings, hooks, resume=resume, overwrite=overwrite, dist=dist,
                            progress=progress, plans_info=plans_info)
        if dist.is_main:
            genotype = winner_genotype(state, plans, settings)
            new_plans, how = write_into_plans(plans_path, genotype)
            plot_genotype(genotype, search_dir / GENOTYPE_PNG,
                          title_extra=f"{task_name}: fine Dice {state.winner['fine_score']:.3f}")
            extra = dict(hooks.describe or {})
            extra["plans"] = {"file": str(plans_path), "refit": how, "patch_size": list(new_plans.patch_size),
                              "batch_size": int(new_plans.batch_size),
                              "estimated_memory_gb": float(new_plans.estimated_memory_gb)}
            extra["genotype"] = genotype.to_dict()
            extra["world_size"] = dist.world_size
            write_report(search_dir / REPORT_FILE, state, SearchSettings().to_dict(), extra)
        dist.barrier()
        return state
    finally:
        dist.close()
