"""`search_core`: the search's stages in order, on one folder, for every worker.

`search_core` is the search without training or plans: it takes `SearchHooks`
(coarse evaluator, supernet trainer, fine evaluator factory, stand-alone evaluator), so
tests drive the whole flow -- clustering, the asynchronous rung schedule, evolution,
shared trial files, resume, report, plots -- with fake evaluators. `run_search`
(`search/api.py`) builds the real hooks from the plans and `training.api`.

Every worker (torchrun rank, or a process started later with `SearchRun(join=True)`) runs
`search_core` on the same folder; the main worker (rank 0, not joined) also trains the
supernet and writes state, report and plots. See `optuna_trials.py` for how workers share
work (Optuna trials in the journal file `optuna_journal.log` in the search folder, or the
`storage` URL).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from c2fnas_auto.errors import C2FNASError
from c2fnas_auto.search.asha import Rungs
from c2fnas_auto.search.files import PROGRESS_PNG, RANKING_PNG, REPORT_FILE, STATE_FILE
from c2fnas_auto.search.jobs import WorkerOptions
from c2fnas_auto.search.optuna_trials import OptunaTrials
from c2fnas_auto.search.progress import Progress
from c2fnas_auto.search.budgeting import guard, resolve_budget, restrict_topologies, width_for
from c2fnas_auto.search.report import noise_checks, plot_progress, plot_ranking, ranking_checks, write_report
from c2fnas_auto.search.run import SearchRun
from c2fnas_auto.search.saving import Saver, check_same, open_search
from c2fnas_auto.search.settings import SearchHooks, SearchSettings, Topologies, default_topologies
from c2fnas_auto.search.stages import (StageContext, cluster_once, coarse_stage, fine_stage, repeat_stage,
                                       standalone_sample, standalone_stage, supernet_stage)
from c2fnas_auto.search.state import CandidateRecord, SearchState
from c2fnas_auto.search.stop import search_stop_flag
from c2fnas_auto.search.storage import default_url
from c2fnas_auto.utils.distributed import DistContext


def search_core(search_dir: Path, task_name: str, settings: SearchSettings, hooks: SearchHooks,
                run: SearchRun = SearchRun(), *, topologies: Topologies | None = None,
                plans_info: dict[str, Any] | None = None, heldout: dict[str, Any] | None = None,
                budget: tuple[Any, dict[str, Any]] | None = None) -> SearchState:
    """Clustering -> coarse rungs (ASHA + evolution) -> supernet -> fine evolution ->
    stand-alone check; every finished candidate is published at once.

    `run`: how this worker takes part (start mode, workers, progress, stop; `run.py`).
    `plans_info` (patch, batch, network, memory budget the candidates are trained at) and
    `heldout` (the cases kept out) are stored with a new state; resuming an unfinished
    state under different ones refuses, because its scores would no longer compare.
    `budget`: (nas.budget.CostBudget, record) from `budgeting.resolve_budget` (default: the
    settings' own limits); both stages keep to it through `hooks.pricing`, and each stage's
    ranking is checked against its seed noise (`settings.noise_repeats`, `standalone_repeats`).

    One function: the stages run in order on one state, store and stop flag, so the body reads as
    the search's outline; each stage's work lives in stages.py.
    """
    settings.validate()
    workers = (run.workers or WorkerOptions()).validate()
    rungs = settings.schedule()
    run.check_modes()
    dist = run.dist or DistContext()
    main = dist.is_main and not run.join
    stop = run.stop or search_stop_flag()
    topo = topologies or default_topologies()
    search_dir = Path(search_dir)
    state_path = search_dir / STATE_FILE
    url = run.storage or default_url(search_dir)
    opened = (open_search(search_dir, task_name, settings, resume=run.resume, overwrite=run.overwrite,
                          join=run.join, url=url) if (main or run.join) else None)
    if not run.join:
        opened = dist.broadcast(opened)  # every rank starts once rank 0 has opened (or cleared) the folder
    assert opened is not None  # rank 0 always opens, and the broadcast hands its result to every rank
    state = SearchState.from_dict(opened.unwrap(), state_path)
    check_same(state, "plans", plans_info or {}, what="plans", state_path=state_path)
    check_same(state, "heldout", heldout or {}, what="held-out set", state_path=state_path)
    limits, budget_info = budget or resolve_budget(settings)
    check_same(state, "budget", budget_info, what="budget", state_path=state_path)
    winner_width: dict[str, float | None] = {"m": None}  # the coarse winner's widths (equal-cost search)
    hooks, topo, widths = _within_budget(hooks, topo, settings, limits, winner_width)

    save = Saver(state, state_path, main)

    if state.finished:  # replay: nothing is trained or scored again
        if main:
            write_outputs(search_dir, state, hooks)
        return state

    store = OptunaTrials(url, task_name, worker_id=run.worker_id, options=workers).start()
    bar = Progress(run.progress, main, run.lines)
    try:
        if main:
            store.mark("main", {"worker": store.worker_id}, replace=True)
        run_stages(StageContext(store=store, state=state, settings=settings, hooks=hooks, topo=topo, dist=dist,
                                bar=bar, stop=stop, save=save, main=main), rungs, widths=widths,
                   winner_width=winner_width)
        if main:
            write_outputs(search_dir, state, hooks)
        return state
    except BaseException:
        save()  # the in-memory state holds every candidate finished so far (stop signal, crash)
        raise
    finally:
        bar.close()
        store.stop()


def run_stages(ctx: StageContext, rungs: Rungs, *, widths: Any = None,
               winner_width: dict[str, float | None] | None = None) -> None:
    """Clustering, the coarse rungs and their noise check, the supernet, the fine evolution, the
    stand-alone check and its noise check, then the winner and the finished state. `widths`: the
    equal-cost search's width multiplier per coarse candidate; `winner_width["m"]` receives the
    coarse winner's, which every later stage trains at."""
    state, settings, hooks = ctx.state, ctx.settings, ctx.hooks
    clustering = cluster_once(state, ctx.topo, settings)
    ctx.save()
    levels, coarse_best = coarse_stage(ctx, rungs, clustering, widths)
    width = coarse_best.width_multiplier
    if winner_width is not None:
        winner_width["m"] = width
    if hooks.use_width is not None:
        hooks.use_width(width)
    if settings.noise_repeats:
        repeat_stage(ctx, "coarse_repeat",
                     standalone_sample([r for r in state.coarse if r.rung == 0], settings.noise_repeats),
                     hooks.coarse_evaluate, epochs=rungs.epochs(0))
    supernet = supernet_stage(ctx, levels)
    fine_best = fine_stage(ctx, hooks.fine_evaluator(supernet), levels)
    standalone_stage(ctx, rungs, width)
    if settings.standalone_repeats and settings.standalone_sample and hooks.standalone_evaluate is not None:
        repeat_stage(ctx, "standalone_repeat", standalone_sample(state.standalone, settings.standalone_repeats),
                     hooks.standalone_evaluate, epochs=rungs.epochs(rungs.top), width=width)
    state.ranking = ranking_checks(state)
    state.noise = noise_checks(state)
    state.winner = winner_record(coarse_best, fine_best, width)
    state.finished = True
    ctx.save()


def winner_record(coarse_best: CandidateRecord, fine_best: CandidateRecord,
                  width_multiplier: float | None = None) -> dict[str, Any]:
    """The state's `winner`: the fine stage's best op choice and the coarse candidate it grew from
    (`width_multiplier`: the widths it was searched at, equal-cost search)."""
    return {"levels": list(fine_best.levels), "ops": list(fine_best.ops), "fine_score": fine_best.score,
            "coarse_score": coarse_best.score, "coarse_rung": coarse_best.rung,
            "coarse_epochs": coarse_best.epochs, "coarse_candidate": coarse_best.candidate,
            "coarse_index": coarse_best.index, "fine_index": fine_best.index, "params": fine_best.params,
            "flops": fine_best.flops, "training_bytes": fine_best.training_bytes,
            "width_multiplier": width_multiplier}


def _within_budget(hooks: SearchHooks, topo: Topologies, settings: SearchSettings, limits: Any,
                   winner_width: dict[str, float | None]) -> tuple[SearchHooks, Topologies, Any]:
    """The hooks, topologies and coarse widths under an active budget: every evaluator guarded,
    and either the widths that fill the budget (`--equal-cost`) or only the topologies inside it."""
    if not limits.active:
        return hooks, topo, None
    if hooks.pricing is None:
        raise C2FNASError("a budget needs the cost model at the plans (SearchHooks.pricing), these hooks have none")
    hooks = _guarded(hooks, limits, winner_width)
    if settings.equal_cost:
        return hooks, topo, width_for(hooks.pricing, limits)
    return hooks, restrict_topologies(topo, hooks.pricing, limits, settings.coarse_op), None


def _guarded(hooks: SearchHooks, limits: Any, winner_width: dict[str, float | None]) -> SearchHooks:
    """The hooks with every evaluator behind the budget's guard (nothing outside it is trained or scored)."""
    pricing = hooks.pricing
    fine_evaluator = hooks.fine_evaluator

    def later() -> float | None:  # stages after the coarse one run at its winner's widths
        return winner_width["m"]

    return dataclasses.replace(
        hooks, coarse_evaluate=guard(hooks.coarse_evaluate, pricing, limits),
        fine_evaluator=lambda supernet: guard(fine_evaluator(supernet), pricing, limits, later),
        standalone_evaluate=None if hooks.standalone_evaluate is None else
        guard(hooks.standalone_evaluate, pricing, limits, later))


def write_outputs(search_dir: Path, state: SearchState, hooks: SearchHooks,
                  extra: dict[str, Any] | None = None) -> None:
    report_extra = dict(hooks.describe or {})
    report_extra.update(extra or {})
    write_report(search_dir / REPORT_FILE, state, default_settings=SearchSettings().to_dict(), extra=report_extra)
    plot_progress(state, search_dir / PROGRESS_PNG)
    plot_ranking(state, search_dir / RANKING_PNG)
