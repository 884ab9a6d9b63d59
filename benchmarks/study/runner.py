"""Run the study: tasks -> search on the source task -> train every arm with the same
budget and seeds on every task -> score on held-out cases -> summary and plot.

Resumable at two grains: the search keeps its own state (`run_search(resume=True)`)
and its winner is saved next to the results once finished; every training's scores go
into the results file the moment they exist, and a rerun skips stored trainings.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from benchmarks.study.arms import Arm, build_arms, network_config
from benchmarks.study.profiles import StudyProfile
from benchmarks.study.store import ResultStore, job_key
from benchmarks.study.tasks import REAL_DATA, TaskSpec, make_task, prepare_heldout
from c2fnas_auto.errors import C2FNASError
from c2fnas_auto.utils.io import load_json

RESULTS_FILE = "results.json"
SEARCHED_FILE = "searched_genotype.json"
SEARCH_REPORT_COPY = "search_report.json"


@dataclass
class PreparedTask:
    spec: TaskSpec
    task_dir: Path
    preprocessed: Path
    plans: Any
    train_ids: list[str]
    heldout_dir: Path
    heldout_ids: list[str]


def set_environment(workdir: Path) -> None:
    for var, sub in (("C2FNAS_raw", "raw"), ("C2FNAS_preprocessed", "preprocessed"), ("C2FNAS_results", "results")):
        os.environ[var] = str(workdir / sub)


def prepare_task(spec: TaskSpec, profile: StudyProfile, workdir: Path, real_data: Path = REAL_DATA) -> PreparedTask:
    """Raw task, plans (kept in our own copy, so the search's refit of the source plans
    never changes the patch or batch the arms are trained at), preprocessing, held-out set."""
    from c2fnas_auto.planning.pipeline import plan_and_preprocess
    from c2fnas_auto.planning.plans import Plans
    from c2fnas_auto.paths import preprocessed_dir
    from c2fnas_auto.training.splits import fold_case_ids

    task_dir = make_task(workdir / "raw", spec, real_data)
    plans_copy = workdir / "study_plans" / f"{spec.key}.json"
    pre = preprocessed_dir(task_dir.name)
    if plans_copy.is_file() and (pre / "plans.json").is_file():
        plans = Plans.load(plans_copy)
    else:
        plans = plan_and_preprocess(task_dir.name, gpu_memory_gb=profile.gpu_memory_gb,
                                    base_channels=profile.base_channels, num_workers=1, progress=False)
        plans_copy.parent.mkdir(parents=True, exist_ok=True)
        plans.save(plans_copy)
    train_ids, _ = fold_case_ids(pre, "all")
    heldout_dir = workdir / "heldout" / task_dir.name
    heldout_ids = prepare_heldout(task_dir, plans, heldout_dir)
    overlap = set(heldout_ids) & set(train_ids)
    if overlap:
        raise C2FNASError(f"{task_dir}: held-out cases also among the training cases: {sorted(overlap)[:3]}")
    return PreparedTask(spec, task_dir, pre, plans, list(train_ids), heldout_dir, heldout_ids)


def search_settings(overrides: dict[str, Any]):
    """SearchSettings from the profile, keeping only fields this engine has (the engine
    gains options over time; a profile must not break on an older or newer one)."""
    from c2fnas_auto.search.api import SearchSettings

    known = {f.name for f in dataclasses.fields(SearchSettings)}
    return SearchSettings(**{k: v for k, v in overrides.items() if k in known})


def _search_files(task: PreparedTask) -> list[Path]:
    """Where report.json may live (preprocessed/<task>/search today, results/<task>/search soon)."""
    from c2fnas_auto.paths import search_results_dir

    return [Path(search_results_dir(task.task_dir.name)), task.preprocessed / "search"]


def run_or_load_search(task: PreparedTask, profile: StudyProfile, out: Path, store: ResultStore, progress: bool):
    """The searched genotype: from `out/searched_genotype.json` when a previous run finished
    the search, else from `run_search` (resumable through its own state)."""
    from c2fnas_auto.nas.genotype import Genotype
    from c2fnas_auto.search.api import run_search

    saved = out / SEARCHED_FILE
    if saved.is_file():
        return Genotype.load(saved)
    settings = search_settings(profile.search)
    t0, c0 = time.perf_counter(), time.process_time()
    state = run_search(task.task_dir.name, settings, device="cpu", resume=True, progress=progress)
    w = state.winner
    genotype = Genotype(levels=w["levels"], ops=w["ops"], provenance={
        "source": "benchmarks.search_study", "source_task": task.task_dir.name, "fine_score": w.get("fine_score"),
        "coarse_score": w.get("coarse_score"), "settings": settings.to_dict()}).validate()
    for folder in _search_files(task):
        if (folder / "report.json").is_file():
            shutil.copyfile(folder / "report.json", out / SEARCH_REPORT_COPY)
            for png in folder.glob("*.png"):
                shutil.copyfile(png, out / f"search_{png.name}")
            break
    store.set_meta(search_seconds=round(time.perf_counter() - t0, 1),
                   search_cpu_seconds=round(time.process_time() - c0, 1), search_settings=settings.to_dict(),
                   search_loadavg_end=list(os.getloadavg()))
    genotype.save(saved)
    return genotype


def train_and_score(task: PreparedTask, arm: Arm, seed: int, profile: StudyProfile) -> dict[str, Any]:
    import numpy as np
    import torch

    from c2fnas_auto.nas.network import build_network
    from c2fnas_auto.training.api import fit, score_cases

    load_before = os.getloadavg()[0]
    torch.manual_seed(seed)
    net = build_network(arm.genotype, network_config(task.plans, arm))
    t0, c0 = time.perf_counter(), time.process_time()
    losses = fit(net, task.plans, task.preprocessed, task.train_ids, epochs=profile.epochs,
                 iters_per_epoch=profile.iters_per_epoch, device="cpu", seed=seed)
    t1 = time.perf_counter()
    scores = score_cases(net, task.plans, task.heldout_dir, task.heldout_ids, device="cpu")
    t2, c2 = time.perf_counter(), time.process_time()
    case_mean = {cid: (float(np.mean(list(d.values()))) if d else None) for cid, d in scores["per_case"].items()}
    return {"mean_fg_dice": scores["mean_fg_dice"], "per_case": scores["per_case"], "case_mean": case_mean,
            "final_loss": float(losses[-1]) if losses else None, "train_seconds": round(t1 - t0, 2),
            "score_seconds": round(t2 - t1, 2),
            "cpu_seconds": round(c2 - c0, 2), "loadavg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "params": int(sum(p.numel() for p in net.parameters())), "torch_threads": _threads()}


def _threads() -> int:
    import torch

    return int(torch.get_num_threads())


def plan_jobs(profile: StudyProfile, arms: list[Arm]) -> list[tuple[TaskSpec, Arm, int]]:
    """Seed-major order across tasks (seed 0 of every task, then seed 1, ...): a run stopped
    part-way has every task at the same number of seeds for every arm."""
    jobs = []
    for seed in range(max(profile.seeds_source, profile.seeds_transfer)):
        for spec in profile.tasks:
            if seed not in profile.seeds(spec.key):
                continue
            for arm in arms:
                if "@" in arm.name and spec.key != profile.source.key:
                    continue  # the cell-style comparison runs on the source task only
                jobs.append((spec, arm, seed))
    return jobs


def run_study(profile: StudyProfile, workdir: Path, out: Path, progress: bool = True,
              real_data: Path = REAL_DATA) -> ResultStore:
    from benchmarks.study.report import write_summary

    workdir, out = Path(workdir).resolve(), Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    set_environment(workdir)
    store = ResultStore(out / RESULTS_FILE, profile.name)
    tasks = {}
    for spec in tqdm(profile.tasks, desc="tasks", disable=not progress, unit="task"):
        tasks[spec.key] = prepare_task(spec, profile, workdir, real_data)
    store.set_meta(tasks={k: {"folder": t.task_dir.name, "describe": t.spec.describe(),
                              "patch_size": list(t.plans.patch_size), "batch_size": int(t.plans.batch_size),
                              "target_spacing": [float(s) for s in t.plans.target_spacing],
                              "train_cases": len(t.train_ids), "heldout_cases": t.heldout_ids}
                          for k, t in tasks.items()},
                   torch_threads_last_run=_threads(),
                   budget={"epochs": profile.epochs, "iters_per_epoch": profile.iters_per_epoch,
                           "gpu_memory_gb": profile.gpu_memory_gb, "base_channels": profile.base_channels})
    searched = run_or_load_search(tasks[profile.source.key], profile, out, store, progress)
    main_style = tasks[profile.source.key].plans.network_config().cell_style
    arms = build_arms(searched, profile.num_random, profile.random_seed, main_style)
    store.set_meta(arms={a.name: {"genotype_id": a.genotype.short_id(), "levels": list(a.genotype.levels),
                                  "ops": list(a.genotype.ops), "cell_style": a.cell_style} for a in arms})
    jobs = plan_jobs(profile, arms)
    done = store.done()
    bar = tqdm(jobs, desc="trainings", disable=not progress, unit="training")
    for spec, arm, seed in bar:
        gid = arm.genotype.short_id()
        key = job_key(spec.key, arm.name, gid, arm.cell_style, seed)
        if key in done:
            continue
        bar.set_postfix_str(f"{spec.key} {arm.name} seed {seed}")
        same = store.find_same_training(spec.key, gid, arm.cell_style, seed)
        scores = dict(same["scores"], reused_from=same["key"]) if same else \
            train_and_score(tasks[spec.key], arm, seed, profile)
        store.add({"key": key, "task": spec.key, "arm": arm.name, "genotype_id": gid, "cell_style": arm.cell_style,
                   "seed": seed, "scores": scores, "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        done[key] = store.records[-1]
    bar.close()
    write_summary(store, out, profile)
    return store


def summarise_only(profile: StudyProfile, out: Path) -> None:
    """Summary and plot from whatever the results file holds (for partial runs)."""
    from benchmarks.study.report import write_summary

    out = Path(out).resolve()
    path = out / RESULTS_FILE
    if not path.is_file():
        raise C2FNASError(f"{path}: no results yet (run the study first)")
    write_summary(ResultStore(path, profile.name), out, profile)


def read_search_report(out: Path) -> dict[str, Any] | None:
    path = Path(out) / SEARCH_REPORT_COPY
    if not path.is_file():
        return None
    try:
        return load_json(path, "search report")
    except C2FNASError:
        return None


