"""The budget study: does the search find a better topology than random ones of the same cost?

Protocol and decision rule: documentation/studies/search_budget_study.md (written before
the study ran). Flow: tasks -> `search_runs` searches under the budget on the search task
(seeds 0..) -> arms scaled to each task's budget (the winners, the reference, nnU-Net's
network, random genotypes matched to the winners' cost band) -> trainings (seed-major) and a
longer check on the search task -> D, Holm, the rule, taus (`budget_stats.py`).

Resumable like the other studies: every search keeps its own state and its winner is saved
next to the results once finished; every training's scores go into the results file the
moment they exist, and a rerun skips stored trainings.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from benchmarks.study.arms import Arm, random_genotypes
from benchmarks.study.budget_report import LONG, write_budget_summary
from benchmarks.study.profiles import StudyProfile
from benchmarks.study.store import ResultStore, job_key
from benchmarks.study.tasks import TaskSpec
from c2fnas_auto.errors import C2FNASError

MAX_RANDOM_DRAWS = 2000


@dataclass(frozen=True)
class BudgetProfile(StudyProfile):
    """Sizes of the budget study: the study profile's, with `source` the search task (searched
    `search_runs` times) and `transfers` the other tasks; every task trains every arm."""

    search_runs: int = field(kw_only=True)
    band: float = 0.15  # random genotypes within +-band of the winners' mean parameters and FLOPs
    long_factor: int = 2
    long_seeds: int = 3
    long_random: int = 4


def _specs(tiny: bool) -> tuple[TaskSpec, TaskSpec]:
    if tiny:
        return (TaskSpec("search", "synthetic", 194, "BudgetSmokeSearch", 4, 2, (16, 32, 32), (3.0, 1.0, 1.0),
                         "CT", 1, seed=0),
                TaskSpec("other", "synthetic", 195, "BudgetSmokeOther", 3, 2, (8, 32, 32), (5.0, 0.8, 0.8),
                         "MR", 1, seed=7))
    return (TaskSpec("hippocampus", "hippocampus", 196, "StudyHippocampus", 48, 16, (64, 64, 64), seed=0),
            TaskSpec("source", "synthetic", 191, "StudySource", 16, 8, (24, 48, 48), (3.0, 1.0, 1.0), "CT", 1, seed=0))


# the settings under test ("the new defaults"): a budget both stages keep to, candidates scaled
# to it, a noise check; the rest is the power study's search at its CPU scale
BUDGET_SEARCH = dict(budget="reference", equal_cost=True, budget_band=0.15, noise_repeats=4, standalone_repeats=2,
                     coarse_candidates=24, min_epochs=2, eta=3, rungs=2, clusters=4, population=8, fine_epochs=8,
                     generations=3, iters_per_epoch=20, standalone_sample=4)

BUDGET_PROFILES: dict[str, BudgetProfile] = {
    "budget": BudgetProfile("budget", *_specs(False)[:1], (_specs(False)[1],), epochs=10, iters_per_epoch=40,
                            seeds_source=5, seeds_transfer=2, search_runs=4, num_random=16, search=BUDGET_SEARCH,
                            nnunet_arm=True),
    "budget_smoke": BudgetProfile(
        "budget_smoke", *_specs(True)[:1], (_specs(True)[1],), epochs=1, iters_per_epoch=2, seeds_source=2,
        seeds_transfer=1, search_runs=2, num_random=3, n_boot=50, band=0.5, long_seeds=2, long_random=2,
        search={**BUDGET_SEARCH, **dict(coarse_candidates=3, min_epochs=1, eta=2, rungs=2, clusters=2, population=2,
                                        fine_epochs=1, generations=1, iters_per_epoch=2, tournament=1,
                                        standalone_sample=2, noise_repeats=2, standalone_repeats=0,
                                        budget_band=0.5)}),
}


# ------------------------------------------------------------------------ arms
def task_budget(plans):
    """Each task's budget: the reference genotype's parameters at the task's plans."""
    from c2fnas_auto.nas.budget import CostBudget
    from c2fnas_auto.planning.budgets import named_budget

    return CostBudget(max_params=named_budget("reference", plans).params)


def _pricing(plans):
    from c2fnas_auto.nas.budget import Pricing

    return Pricing(plans.network_config(), tuple(int(p) for p in plans.patch_size), int(plans.batch_size))


def scaled_arm(name: str, genotype, plans, budget) -> tuple[Arm, dict[str, Any]]:
    """The genotype at the width that fills the budget, and its price there."""
    pricing = _pricing(plans)
    m = math.floor(pricing.width_for(genotype.levels, genotype.ops, budget)[0] * 1e4) / 1e4  # stored: never above
    cost = pricing.cost(genotype.levels, genotype.ops, m)
    return (Arm(name, genotype, plans.network_config().cell_style, m),
            {"width_multiplier": m, "params": int(cost.params), "gflops": round(cost.flops / 1e9, 4)})


def matched_randoms(n: int, seed: int, plans, budget, target_params: float, target_flops: float,
                    band: float) -> tuple[list[Any], int]:
    """The first n uniformly drawn genotypes whose scaled cost is within +-band of the targets on
    both parameters and FLOPs; (genotypes, draws needed)."""
    from c2fnas_auto.nas.budget import BudgetError

    pricing = _pricing(plans)
    chosen = []
    pool = random_genotypes(MAX_RANDOM_DRAWS, seed)
    for draws, g in enumerate(pool, start=1):
        try:
            _, cost = pricing.width_for(g.levels, g.ops, budget)
        except BudgetError:
            continue
        if abs(cost.params / target_params - 1) <= band and abs(cost.flops / target_flops - 1) <= band:
            chosen.append(g)
            if len(chosen) == n:
                return chosen, draws
    raise C2FNASError(f"only {len(chosen)} of {MAX_RANDOM_DRAWS} random genotypes fall within +-{band:.0%} of the "
                      f"winners' cost; widen the band or lower num_random")


def nnunet_scaled_arm(task, budget) -> tuple[Arm, dict[str, Any]]:
    from benchmarks.study.nnunet_arm import architecture_price
    from c2fnas_auto.nas.budget import largest_multiplier

    plan = task.nnunet
    price = lambda m: architecture_price(plan.architecture, task.plans.num_channels, task.plans.num_classes,  # noqa: E731
                                         plan.patch_size, m)
    m = largest_multiplier(lambda m: price(m)[0] / budget.max_params)
    if m is None:
        raise C2FNASError(f"{task.task_dir.name}: nnU-Net's network cannot be narrowed into the budget")
    m = math.floor(m * 1e4) / 1e4
    params, flops = price(m)
    return Arm("nnunet_scaled", None, "nnunet", m), {"width_multiplier": m, "params": params,
                                                     "gflops": round(flops / 1e9, 4)}


def build_budget_arms(tasks: dict[str, Any], profile: BudgetProfile, winners: list[Any]) -> tuple[dict, dict]:
    """task -> arms scaled to its budget, and task -> arm -> price. The random genotypes are
    matched on the search task (where the winners were found) and the same on every task."""
    from c2fnas_auto.nas.genotype import reference_genotype

    search = tasks[profile.source.key]
    budget = task_budget(search.plans)
    won = [scaled_arm(f"winner_{k}", g, search.plans, budget)[1] for k, g in enumerate(winners)]
    randoms, draws = matched_randoms(profile.num_random, profile.random_seed, search.plans, budget,
                                     float(np.mean([w["params"] for w in won])),
                                     float(np.mean([w["gflops"] for w in won])) * 1e9, profile.band)
    arms, prices = {}, {}
    for key, task in tasks.items():
        b = task_budget(task.plans)
        named = [(f"winner_{k}", g) for k, g in enumerate(winners)] + [("reference_scaled", reference_genotype())]
        named += [(f"random_{i}", g) for i, g in enumerate(randoms)]
        built = [scaled_arm(name, g, task.plans, b) for name, g in named]
        if profile.nnunet_arm and task.nnunet is not None:
            built.append(nnunet_scaled_arm(task, b))
        arms[key] = [a for a, _ in built]
        prices[key] = {a.name: {**p, "genotype_id": a.network_id,
                                **({"levels": a.genotype.levels, "ops": a.genotype.ops} if a.genotype else {})}
                       for a, p in built}
        prices[key]["_budget"] = {"max_params": b.max_params, "random_draws": draws, "band": profile.band}
    return arms, prices


# ------------------------------------------------------------------------ searches
SEARCH_STATE = "search_state"


def search_state_dir(out: Path, k: int) -> Path:
    """Where search run `k` keeps its results folder (state, journal, report)."""
    return out / SEARCH_STATE / f"results_run{k}"


def run_searches(task, profile: BudgetProfile, out: Path, progress: bool) -> list[Any]:
    """`search_runs` searches with seeds 0.. on the search task, each in its own results folder
    and each from the study's plans (a finished search writes its winner into plans.json).

    The results folders live under `out/search_state/` (the committed results), not in the
    workdir: a search's state and Optuna journal are small, so an unfinished search is committed
    with the results and the next session's run goes on from it (the workdir is rebuilt the same
    way from the raw data; the supernet's weights are not committed and are retrained if lost)."""
    from c2fnas_auto.nas.genotype import Genotype
    from c2fnas_auto.search.api import run_search
    from c2fnas_auto.search.run import SearchRun

    from benchmarks.study.runner import search_settings

    winners = []
    results_root = os.environ.get("C2FNAS_results")
    try:
        for k in range(profile.search_runs):
            saved = out / f"searched_run{k}.json"
            if saved.is_file():
                winners.append(Genotype.load(saved))
                continue
            os.environ["C2FNAS_results"] = str(search_state_dir(out, k))
            task.plans.save(task.preprocessed / "plans.json")
            settings = search_settings({**profile.search, "seed": k})
            t0 = time.perf_counter()
            state = run_search(task.task_dir.name, settings, SearchRun(resume=True, progress=progress), device="cpu")
            w = state.winner
            g = Genotype(levels=w["levels"], ops=w["ops"], provenance={
                "source": "benchmarks.search_study --budget-study", "run": k, "fine_score": w.get("fine_score"),
                "coarse_score": w.get("coarse_score"), "search_seconds": round(time.perf_counter() - t0, 1),
                "settings": settings.to_dict()}).validate()
            from c2fnas_auto.paths import search_results_dir

            report = Path(search_results_dir(task.task_dir.name)) / "report.json"
            if report.is_file():
                shutil.copyfile(report, out / f"search_report_run{k}.json")
            g.save(saved)
            winners.append(g)
    finally:
        if results_root is not None:
            os.environ["C2FNAS_results"] = results_root
        task.plans.save(task.preprocessed / "plans.json")
    return winners


# ------------------------------------------------------------------------ trainings
def plan_budget_jobs(profile: BudgetProfile, arms: dict[str, list[Arm]],
                     shard: tuple[int, int] = (0, 1)) -> list[tuple[str, Arm, int, int]]:
    """(task key, arm, seed, epochs): seed-major over the tasks, then the longer check on the
    search task (winners, scaled reference, the first `long_random` random genotypes)."""
    jobs = []
    for seed in range(max(profile.seeds_source, profile.seeds_transfer)):
        for spec in profile.tasks:
            if seed in profile.seeds(spec.key):
                jobs += [(spec.key, a, seed, profile.epochs) for a in arms[spec.key]]
    long_names = {f"random_{i}" for i in range(profile.long_random)} | {"reference_scaled"}
    long_arms = [a for a in arms[profile.source.key] if a.name.startswith("winner_") or a.name in long_names]
    for seed in range(profile.long_seeds):
        jobs += [(profile.source.key + LONG, a, seed, profile.epochs * profile.long_factor) for a in long_arms]
    k, n = shard
    return jobs[k::n]


def run_budget_study(profile: BudgetProfile, workdir: Path, out: Path, progress: bool = True,
                     shard: tuple[int, int] = (0, 1), search_only: bool = False) -> ResultStore:
    from benchmarks.study.runner import load_store, prepare_task, results_path, set_environment, train_and_score

    workdir, out = Path(workdir).resolve(), Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    set_environment(workdir)
    store = ResultStore(results_path(out, shard), profile.name)
    tasks = {spec.key: prepare_task(spec, profile, workdir) for spec in profile.tasks}
    if shard[0] > 0 and not all((out / f"searched_run{k}.json").is_file() for k in range(profile.search_runs)):
        raise C2FNASError(f"{out}: the searches have not finished; shard 0 runs them, start the other shards after")
    winners = run_searches(tasks[profile.source.key], profile, out, progress)
    if search_only:
        return store
    arms, prices = build_budget_arms(tasks, profile, winners)
    store.set_meta(tasks={k: {"folder": t.task_dir.name, "describe": t.spec.describe(),
                              "patch_size": list(t.plans.patch_size), "batch_size": int(t.plans.batch_size),
                              "train_cases": len(t.train_ids), "heldout_cases": t.heldout_ids,
                              "labels": dict(t.plans.labels)} for k, t in tasks.items()},
                   arms=prices, budget={"epochs": profile.epochs, "iters_per_epoch": profile.iters_per_epoch,
                                        "long_factor": profile.long_factor, "gpu_memory_gb": profile.gpu_memory_gb,
                                        "base_channels": profile.base_channels})
    done = load_store(out, profile.name).done()
    jobs = plan_budget_jobs(profile, arms, shard)
    bar = tqdm(jobs, desc="trainings", disable=not progress, unit="training")
    for task_key, arm, seed, epochs in bar:
        key = job_key(task_key, arm.name, arm.network_id, arm.cell_style, seed)
        if key in done:
            continue
        bar.set_postfix_str(f"{task_key} {arm.name} seed {seed}")
        task = tasks[task_key.removesuffix(LONG)]
        scores = train_and_score(task, arm, seed, profile, epochs=epochs)
        store.add({"key": key, "task": task_key, "arm": arm.name, "genotype_id": arm.network_id,
                   "cell_style": arm.cell_style, "seed": seed, "epochs": epochs, "scores": scores,
                   "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        done[key] = store.records[-1]
    bar.close()
    merged = load_store(out, profile.name)
    write_budget_summary(merged, out, profile)
    return merged
