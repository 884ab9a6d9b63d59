"""`search_core`: the search's stages in order, on one folder, for every worker.

`search_core` is the search without training or plans: it takes `SearchHooks`
(coarse evaluator, supernet trainer, fine evaluator factory, stand-alone evaluator), so
tests drive the whole flow -- clustering, the asynchronous rung schedule, evolution,
shared trial files, resume, report, plots -- with fake evaluators. `run_search`
(`search/api.py`) builds the real hooks from the plans and `training.api`.

Every worker (torchrun rank, or a process started later with `join=True`) runs
`search_core` on the same folder; the main worker (rank 0, not joined) also trains the
supernet and writes state, report and plots. See `optuna_trials.py` for how workers share
work (Optuna trials in the journal file `optuna_journal.log` in the search folder, or the
`storage` URL).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from c2fnas_auto.errors import C2FNASError
from c2fnas_auto.search.distributed import DistContext
from c2fnas_auto.search.files import PROGRESS_PNG, RANKING_PNG, REPORT_FILE, STATE_FILE
from c2fnas_auto.search.jobs import WorkerOptions
from c2fnas_auto.search.optuna_trials import OptunaTrials
from c2fnas_auto.search.progress import Progress
from c2fnas_auto.search.budgeting import guard, resolve_budget, restrict_topologies, width_for
from c2fnas_auto.search.report import noise_checks, plot_progress, plot_ranking, ranking_checks, write_report
from c2fnas_auto.search.runner import CandidateRunner, Proposal
from c2fnas_auto.search.saving import Saver, check_same, open_search
from c2fnas_auto.search.settings import SearchHooks, SearchSettings, Topologies, default_topologies
from c2fnas_auto.search.stages import (REPEAT_SEED_OFFSET, cluster_once, coarse_stage, fine_stage, repeat_stage,
                                       standalone_sample, supernet_stage)
from c2fnas_auto.search.state import SearchState
from c2fnas_auto.search.stop import StopFlag
from c2fnas_auto.search.storage import default_url


def search_core(search_dir: Path, task_name: str, settings: SearchSettings, hooks: SearchHooks,
                resume: bool = False, overwrite: bool = False, dist: DistContext | None = None,
                progress: bool = True, topologies: Topologies | None = None, lines: bool = True,
                plans_info: dict[str, Any] | None = None, heldout: dict[str, Any] | None = None,
                join: bool = False, stop: StopFlag | None = None, workers: WorkerOptions | None = None,
                worker_id: str | None = None, storage: str | None = None,
                budget: tuple[Any, dict[str, Any]] | None = None) -> SearchState:
    """Clustering -> coarse rungs (ASHA + evolution) -> supernet -> fine evolution ->
    stand-alone check; every finished candidate is published at once.

    `plans_info` (patch, batch, network, memory budget the candidates are trained at) and
    `heldout` (the cases kept out) are stored with a new state; resuming an unfinished
    state under different ones refuses, because its scores would no longer compare.
    `join=True`: a worker added to a running search (never the main worker).
    `stop.check()` runs after every candidate; it raises `SearchStopped` after a signal.
    `storage`: an Optuna storage shared by the workers, a database URL or a journal file path
    (default: the journal file in `search_dir`, which nodes sharing that folder can use too).
    `budget`: (nas.budget.CostBudget, record) from `budgeting.resolve_budget` (default: the
    settings' own limits); both stages keep to it through `hooks.pricing`, and each stage's
    ranking is checked against its seed noise (`settings.noise_repeats`, `standalone_repeats`).
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
    payload = open_search(search_dir, state_path, task_name, settings, resume, overwrite, join, url) if (main or join) else None
    if not join:
        payload = dist.broadcast(payload)  # every rank starts once rank 0 has opened (or cleared) the folder
    if "error" in payload:
        raise C2FNASError(payload["error"])
    state = SearchState.from_dict(payload, state_path)
    check_same(state, "plans", plans_info or {}, "plans", state_path)
    check_same(state, "heldout", heldout or {}, "held-out set", state_path)
    limits, budget_info = budget or resolve_budget(settings)
    check_same(state, "budget", budget_info, "budget", state_path)
    winner_width: dict[str, float | None] = {"m": None}  # the coarse winner's widths (equal-cost search)
    widths = None
    if limits.active:
        if hooks.pricing is None:
            raise C2FNASError("a budget needs the cost model at the plans (SearchHooks.pricing), these hooks have none")
        hooks = _guarded(hooks, limits, winner_width)
        if settings.equal_cost:
            widths = width_for(hooks.pricing, limits)
        else:
            topo = restrict_topologies(topo, hooks.pricing, limits, settings.coarse_op)

    save = Saver(state, state_path, main)

    if state.finished:  # replay: nothing is trained or scored again
        if main:
            write_outputs(search_dir, state, hooks)
        return state

    store = OptunaTrials(url, task_name, worker_id, workers).start()
    bar = Progress(progress, main, lines)
    try:
        if main:
            store.mark("main", {"worker": store.worker_id}, replace=True)
        clustering = cluster_once(state, topo, settings)
        save()
        levels, coarse_best = coarse_stage(store, state, settings, rungs, hooks, topo, clustering, dist, bar, stop,
                                            save, main, widths)
        winner_width["m"] = coarse_best.width_multiplier
        if hooks.use_width is not None:
            hooks.use_width(coarse_best.width_multiplier)
        seed2 = settings.seed + REPEAT_SEED_OFFSET
        if settings.noise_repeats:
            repeat_stage(store, state, "coarse_repeat", "r",
                         standalone_sample([r for r in state.coarse if r.rung == 0], settings.noise_repeats),
                         hooks.coarse_evaluate, rungs.epochs(0), seed2, dist, bar, stop, save)
        supernet = supernet_stage(store, state, hooks, levels, save, main, stop)
        fine_best = fine_stage(store, state, settings, topo, hooks.fine_evaluator(supernet), levels, dist, bar,
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
                                 generation=r.index, width_multiplier=winner_width["m"]) for r in sample])
            bar.close()
            state.standalone = runner.records
            if settings.standalone_repeats:
                repeat_stage(store, state, "standalone_repeat", "q",
                             standalone_sample(state.standalone, settings.standalone_repeats),
                             hooks.standalone_evaluate, rungs.epochs(rungs.top), seed2, dist, bar, stop, save,
                             width=winner_width["m"])
        state.ranking = ranking_checks(state)
        state.noise = noise_checks(state)
        state.winner = {"levels": list(fine_best.levels), "ops": list(fine_best.ops), "fine_score": fine_best.score,
                        "coarse_score": coarse_best.score, "coarse_rung": coarse_best.rung,
                        "coarse_epochs": coarse_best.epochs, "coarse_candidate": coarse_best.candidate,
                        "coarse_index": coarse_best.index, "fine_index": fine_best.index, "params": fine_best.params,
                        "flops": fine_best.flops, "training_bytes": fine_best.training_bytes,
                        "width_multiplier": winner_width["m"]}
        state.finished = True
        save()
        if main:
            write_outputs(search_dir, state, hooks)
        return state
    except BaseException:
        save()  # the in-memory state holds every candidate finished so far (stop signal, crash)
        raise
    finally:
        bar.close()
        store.stop()


def _guarded(hooks: SearchHooks, limits: Any, winner_width: dict[str, float | None]) -> SearchHooks:
    """The hooks with every evaluator behind the budget's guard (nothing outside it is trained or scored)."""
    import dataclasses

    pricing = hooks.pricing
    fine_evaluator = hooks.fine_evaluator
    later = lambda: winner_width["m"]  # noqa: E731  stages after the coarse one run at its winner's widths
    return dataclasses.replace(
        hooks, coarse_evaluate=guard(hooks.coarse_evaluate, pricing, limits),
        fine_evaluator=lambda supernet: guard(fine_evaluator(supernet), pricing, limits, later),
        standalone_evaluate=None if hooks.standalone_evaluate is None else
        guard(hooks.standalone_evaluate, pricing, limits, later))


def write_outputs(search_dir: Path, state: SearchState, hooks: SearchHooks,
                   extra: dict[str, Any] | None = None) -> None:
    report_extra = dict(hooks.describe or {})
    report_extra.update(extra or {})
    write_report(search_dir / REPORT_FILE, state, SearchSettings().to_dict(), report_extra)
    plot_progress(state, search_dir / PROGRESS_PNG)
    plot_ranking(state, search_dir / RANKING_PNG)
