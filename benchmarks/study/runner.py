"""Run the study: tasks -> search on the source task -> train every arm with the same
budget and seeds on every task -> score on held-out cases -> summary and plot.

Resumable at two grains: the search keeps its own state (`SearchRun(resume=True)`)
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
    nnunet: Any = None  # nnunet_arm.NnunetPlan, for profiles with `nnunet_arm`


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
    nnunet = None
    if profile.nnunet_arm:
        from benchmarks.study.nnunet_arm import plan_nnunet

        nnunet = plan_nnunet(task_dir, spec.task_id, [float(s) for s in plans.target_spacing], profile.gpu_memory_gb,
                             workdir)
    return PreparedTask(spec, task_dir, pre, plans, list(train_ids), heldout_dir, heldout_ids, nnunet)


def search_settings(overrides: dict[str, Any]):
    """SearchSettings from the profile, keeping only fields this engine has (the engine
    gains options over time; a profile must not break on an older or newer one)."""
    from c2fnas_auto.search.settings import SearchSettings

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
    from c2fnas_auto.search.run import SearchRun

    saved = out / SEARCHED_FILE
    if saved.is_file():
        return Genotype.load(saved)
    settings = search_settings(profile.search)
    t0, c0 = time.perf_counter(), time.process_time()
    state = run_search(task.task_dir.name, settings, SearchRun(resume=True, progress=progress), device="cpu")
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


def train_and_score(task: PreparedTask, arm: Arm, seed: int, profile: StudyProfile,
                    epochs: int | None = None, iters_per_epoch: int | None = None) -> dict[str, Any]:
    """Train one arm from scratch (init seed = data seed = `seed`) and score it on the held-out
    cases. `epochs`/`iters_per_epoch` override the profile's budget (the budget calibration)."""
    import numpy as np
    import torch

    from c2fnas_auto.nas.network import build_network
    from c2fnas_auto.training.api import fit, score_cases

    load_before = os.getloadavg()[0]
    torch.manual_seed(seed)
    plans, size = task.plans, {}
    if arm.genotype is None:  # nnU-Net's network, its own patch and batch
        from benchmarks.study.nnunet_arm import build_nnunet_network, plans_for

        net = build_nnunet_network(task.nnunet, len(plans.channel_names), plans.num_classes, arm.width_multiplier)
        plans = plans_for(plans, task.nnunet)
        size = {"patch_size": list(task.nnunet.patch_size), "batch_size": task.nnunet.batch_size}
    else:
        net = build_network(arm.genotype, network_config(task.plans, arm))
    t0, c0 = time.perf_counter(), time.process_time()
    losses = fit(net, plans, task.preprocessed, task.train_ids, epochs=epochs or profile.epochs,
                 iters_per_epoch=iters_per_epoch or profile.iters_per_epoch, device="cpu", seed=seed, **size)
    t1 = time.perf_counter()
    scores = score_cases(net, plans, task.heldout_dir, task.heldout_ids, device="cpu")
    t2, c2 = time.perf_counter(), time.process_time()
    case_mean = {cid: (float(np.mean(list(d.values()))) if d else None) for cid, d in scores["per_case"].items()}
    return {"mean_fg_dice": scores["mean_fg_dice"], "per_case": scores["per_case"], "case_mean": case_mean,
            "class_dice": class_dice(scores["per_case"], plans.num_classes),
            "final_loss": float(losses[-1]) if losses else None, "train_seconds": round(t1 - t0, 2),
            "score_seconds": round(t2 - t1, 2),
            "cpu_seconds": round(c2 - c0, 2), "loadavg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "params": int(sum(p.numel() for p in net.parameters())), "torch_threads": _threads()}


def class_dice(per_case: dict[str, dict[str, float]], num_classes: int) -> dict[str, float | None]:
    """Mean Dice per foreground label over the cases where it is scored (present in truth or prediction)."""
    out: dict[str, float | None] = {}
    for label in range(1, num_classes):
        vals = [d[str(label)] for d in per_case.values() if str(label) in d]
        out[str(label)] = float(sum(vals) / len(vals)) if vals else None
    return out


def _threads() -> int:
    import torch

    return int(torch.get_num_threads())


def plan_jobs(profile: StudyProfile, arms: list[Arm],
              shard: tuple[int, int] = (0, 1)) -> list[tuple[TaskSpec, Arm, int]]:
    """Seed-major order across tasks (seed 0 of every task, then seed 1, ...): a run stopped
    part-way has every task at the same number of seeds for every arm. With `shard` (k, n),
    the k-th of n parallel processes gets every n-th distinct training (task, network, style,
    seed), so arms that are the same network (reused, not retrained) land in one shard."""
    jobs = []
    for seed in range(max(profile.seeds_source, profile.seeds_transfer)):
        for spec in profile.tasks:
            if seed not in profile.seeds(spec.key):
                continue
            for arm in arms:
                if "@" in arm.name and spec.key != profile.source.key:
                    continue  # the cell-style comparison runs on the source task only
                jobs.append((spec, arm, seed))
    k, n = shard
    if n == 1:
        return jobs
    identities: dict[tuple, int] = {}
    for spec, arm, seed in jobs:
        identities.setdefault((spec.key, arm.network_id, arm.cell_style, seed), len(identities))
    return [j for j in jobs if identities[(j[0].key, j[1].network_id, j[1].cell_style, j[2])] % n == k]


def results_path(out: Path, shard: tuple[int, int]) -> Path:
    k, n = shard
    return out / (RESULTS_FILE if n == 1 else f"results_{k}of{n}.json")


def load_store(out: Path, profile_name: str) -> ResultStore:
    """Every shard's records (and meta) merged, read-only, for the summary and for skipping
    what any shard has stored; a key stored twice keeps the first."""
    paths = sorted(Path(out).glob("results*.json"))
    merged = ResultStore(Path(out) / "_merged_view.json", profile_name)
    seen = set()
    for path in paths:
        part = ResultStore(path, profile_name)
        merged.data["meta"].update(part.data.get("meta", {}))
        for r in part.records:
            if r["key"] not in seen:
                seen.add(r["key"])
                merged.records.append(r)
    return merged


def run_study(profile: StudyProfile, workdir: Path, out: Path, progress: bool = True,
              real_data: Path = REAL_DATA, shard: tuple[int, int] = (0, 1), search_only: bool = False) -> ResultStore:
    from benchmarks.study.report import write_summary

    workdir, out = Path(workdir).resolve(), Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    set_environment(workdir)
    store = ResultStore(results_path(out, shard), profile.name)
    budget = {"epochs": profile.epochs, "iters_per_epoch": profile.iters_per_epoch,
              "gpu_memory_gb": profile.gpu_memory_gb, "base_channels": profile.base_channels}
    existing = load_store(out, profile.name)
    stored = existing.data["meta"].get("budget")
    if stored and stored != budget:  # keys do not carry the budget: never mix two budgets in one table
        raise C2FNASError(f"{out}: its results were trained at {stored}, this profile trains at {budget}; "
                          "use another --out")
    tasks = {}
    for spec in tqdm(profile.tasks, desc="tasks", disable=not progress, unit="task"):
        tasks[spec.key] = prepare_task(spec, profile, workdir, real_data)
    store.set_meta(tasks={k: {"folder": t.task_dir.name, "describe": t.spec.describe(),
                              "patch_size": list(t.plans.patch_size), "batch_size": int(t.plans.batch_size),
                              "target_spacing": [float(s) for s in t.plans.target_spacing],
                              "train_cases": len(t.train_ids), "heldout_cases": t.heldout_ids,
                              "labels": dict(t.plans.labels)}
                              | ({"nnunet_plan": t.nnunet.to_dict()} if t.nnunet is not None else {})
                          for k, t in tasks.items()},
                   torch_threads_last_run=_threads(),
                   budget=budget)
    if shard[0] > 0 and not (out / SEARCHED_FILE).is_file():
        raise C2FNASError(f"{out / SEARCHED_FILE}: not there yet; shard 0 runs the search, start the other "
                          "shards when it has finished")
    searched = run_or_load_search(tasks[profile.source.key], profile, out, store, progress)
    if search_only:
        return store
    main_style = tasks[profile.source.key].plans.network_config().cell_style
    arms = build_arms(searched, profile.num_random, profile.random_seed, main_style, nnunet=profile.nnunet_arm)
    store.set_meta(arms={a.name: {"genotype_id": a.network_id, "cell_style": a.cell_style}
                         | ({"levels": list(a.genotype.levels), "ops": list(a.genotype.ops)} if a.genotype else {})
                         for a in arms})
    jobs = plan_jobs(profile, arms, shard)
    done = existing.done()  # every shard's stored trainings, this one's included
    bar = tqdm(jobs, desc="trainings", disable=not progress, unit="training")
    for spec, arm, seed in bar:
        gid = arm.network_id
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
    merged = load_store(out, profile.name)
    write_summary(merged, out, profile)
    return merged


def summarise_only(profile: StudyProfile, out: Path) -> None:
    """Summary and plot from whatever the results file holds (for partial runs)."""
    from benchmarks.study.report import write_summary

    out = Path(out).resolve()
    if not any(out.glob("results*.json")):
        raise C2FNASError(f"{out}: no results*.json yet (run the study first)")
    write_summary(load_store(out, profile.name), out, profile)


def read_search_report(out: Path) -> dict[str, Any] | None:
    path = Path(out) / SEARCH_REPORT_COPY
    if not path.is_file():
        return None
    try:
        return load_json(path, "search report")
    except C2FNASError:
        return None




BUDGET_FILE = "budget.json"
LESION_DICE_GOAL = 0.3
LESION_LEARNED = 0.05  # a seed whose lesion Dice stays below this never learned it


def calibrate_budget(profile: StudyProfile, workdir: Path, out: Path, budgets: list[tuple[int, int]], seeds: int,
                     shard: tuple[int, int] = (0, 1), progress: bool = True, real_data: Path = REAL_DATA) -> dict:
    """Issue 20 item 5: the training budget at which the reference genotype (default cells and
    head) learns the lesion. Trains it on the source task at each (epochs, iterations) budget for
    `seeds` seeds, scores the held-out cases per class and writes `budget.json`: per budget the
    mean and sd over seeds of each class's Dice, and the smallest budget at which every seed
    learned the lesion (the last label) and their mean Dice reaches LESION_DICE_GOAL (a budget
    where one seed in three never learns it would make the lesion column a lottery again).
    Resumable like the study (one file per shard)."""
    from benchmarks.study.arms import Arm
    from c2fnas_auto.nas.genotype import reference_genotype

    workdir, out = Path(workdir).resolve(), Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    set_environment(workdir)
    task = prepare_task(profile.source, dataclasses.replace(profile, nnunet_arm=False), workdir, real_data)
    arm = Arm("reference", reference_genotype(), task.plans.network_config().cell_style)
    k, n = shard
    name = f"{profile.name}-budget"
    store = ResultStore(out / (f"budget_results_{k}of{n}.json" if n > 1 else "budget_results.json"), name)
    done = {r["key"] for path in sorted(out.glob("budget_results*.json")) for r in ResultStore(path, name).records}
    jobs = [(e, i, s) for s in range(seeds) for e, i in budgets][k::n]
    for e, i, s in tqdm(jobs, desc="budget calibration", disable=not progress, unit="training"):
        key = f"{e}x{i}|{s}"
        if key in done:
            continue
        scores = train_and_score(task, arm, s, profile, epochs=e, iters_per_epoch=i)
        store.add({"key": key, "epochs": e, "iters_per_epoch": i, "seed": s, "scores": scores,
                   "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    return summarise_budget(out, name, task.plans.labels, arm)


def summarise_budget(out: Path, name: str, labels: dict, arm) -> dict:
    import numpy as np

    from c2fnas_auto.utils.io import atomic_write_json

    records = [r for path in sorted(Path(out).glob("budget_results*.json")) for r in ResultStore(path, name).records]
    lesion = str(max(int(v) for v in labels.values()))
    rows = {}
    for key in sorted({(r["epochs"], r["iters_per_epoch"]) for r in records}, key=lambda b: b[0] * b[1]):
        rs = [r for r in records if (r["epochs"], r["iters_per_epoch"]) == key]
        row = {"epochs": key[0], "iters_per_epoch": key[1], "iterations": key[0] * key[1], "seeds": len(rs),
               "train_seconds_mean": round(float(np.mean([r["scores"]["train_seconds"] for r in rs])), 1)}
        for label_name, label in labels.items():
            if int(label) == 0:
                continue
            vals = [r["scores"]["class_dice"].get(str(label)) for r in rs]
            vals = [0.0 if v is None else float(v) for v in vals]
            row[f"{label_name}_dice"] = {"mean": float(np.mean(vals)),
                                         "sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else None,
                                         "per_seed": vals}
        lesion_row = row[f"{next(k for k, v in labels.items() if str(v) == lesion)}_dice"]
        row["lesion_mean"] = lesion_row["mean"]
        row["lesion_learned_every_seed"] = all(v >= LESION_LEARNED for v in lesion_row["per_seed"])
        rows[f"{key[0]}x{key[1]}"] = row
    chosen = next((k for k, r in rows.items()
                   if r["lesion_mean"] >= LESION_DICE_GOAL and r["lesion_learned_every_seed"]), None)
    summary = {"arm": arm.name, "genotype_id": arm.network_id, "cell_style": arm.cell_style,
               "goal": f"every seed's held-out Dice of label {lesion} >= {LESION_LEARNED} and their mean "
                       f">= {LESION_DICE_GOAL}", "budgets": rows,
               "chosen": chosen}
    atomic_write_json(Path(out) / BUDGET_FILE, summary)
    return summary
