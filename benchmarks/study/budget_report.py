"""The budget study's summary: D, Holm, the rule and the taus per task (and per class), as
summary.json and summary.md. The statistics are `budget_stats.py`; this module reads the
results into them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from benchmarks.study.store import ResultStore
from c2fnas_auto.utils.io import atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    from benchmarks.study.budget_study import BudgetProfile

SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
LONG = "+long"  # task-key suffix of the longer check's trainings


def _task_stats(records: list[dict[str, Any]], task: str, n_boot: int, label: str | None = None) -> dict[str, Any]:
    from benchmarks.study import budget_stats as bs
    from benchmarks.study import stats
    from benchmarks.study.report import matrices

    mats, seeds, cases = matrices(records, task, label)
    winners = sorted(a for a in mats if a.startswith("winner_"))
    randoms = sorted(a for a in mats if a.startswith("random_"))
    if not seeds or not winners or not randoms:
        return {"seeds": seeds, "cases": len(cases), "complete": False}
    w, r = np.stack([mats[a] for a in winners]), np.stack([mats[a] for a in randoms])
    scores = {a: stats.arm_score(m) for a, m in mats.items()}
    out: dict[str, Any] = {"seeds": seeds, "cases": len(cases), "complete": True,
                           "scores": scores, "D": bs.d_statistic(w, r, n_boot=n_boot),
                           "winner_sd": bs.genotype_sd(w), "genotype_sd": bs.genotype_sd(r),
                           "random_median": float(np.median([scores[a] for a in randoms]))}
    winners_mean = np.nanmean(w, axis=0)
    out["comparisons"] = {f"winners_vs_{a}": stats.paired_bootstrap(winners_mean, mats[a], n_boot=n_boot)
                          for a in ("reference_scaled", "nnunet_scaled") if a in mats}
    out["comparisons"]["winners_vs_random_median"] = {k: out["D"][k] for k in ("low", "high", "p")} | \
        {"diff": out["D"]["d"]}
    if len(seeds) > 1:  # the ceiling: two seeds' rankings of the same arms
        per_seed = {s: {a: float(np.nanmean(m[i])) for a, m in mats.items()} for i, s in enumerate(seeds)}
        out["tau_between_seeds"] = bs.kendall_between(per_seed[seeds[0]], per_seed[seeds[1]])
    return out


def _arm_scores(records: list[dict[str, Any]], task: str) -> tuple[dict[str, float], dict[int, dict[str, float]]]:
    """Each arm's score on a task, and per seed (over the seeds every arm has)."""
    from benchmarks.study import stats
    from benchmarks.study.report import matrices

    mats, seeds, _ = matrices(records, task)
    if not seeds:
        return {}, {}
    per_seed = {s: {a: float(np.nanmean(m[i])) for a, m in mats.items()} for i, s in enumerate(seeds)}
    return {a: stats.arm_score(m) for a, m in mats.items()}, per_seed


def _seed_tau(per_seed: dict[int, dict[str, float]], arms: dict[str, float]) -> dict[str, Any] | None:
    """The ceiling: Kendall tau between the first two seeds' rankings of the arms in `arms`."""
    from benchmarks.study import budget_stats as bs

    if len(per_seed) < 2:
        return None
    a, b = sorted(per_seed)[:2]
    return bs.kendall_between({k: v for k, v in per_seed[a].items() if k in arms},
                              {k: v for k, v in per_seed[b].items() if k in arms})


def _holm_in_place(per_task: dict[str, dict[str, Any]]) -> None:
    from benchmarks.study.budget_stats import holm

    family = {f"{t}|{name}": c.get("p") for t, s in per_task.items() for name, c in s.get("comparisons", {}).items()}
    adjusted = holm(family)
    for key, p in adjusted.items():
        t, name = key.split("|", 1)
        per_task[t]["comparisons"][name]["p_holm"] = p


def write_budget_summary(store: ResultStore, out: Path, profile: BudgetProfile) -> dict[str, Any]:
    from benchmarks.study import budget_stats as bs

    records = store.records
    labels = {k: v.get("labels", {}) for k, v in store.data.get("meta", {}).get("tasks", {}).items()}
    tasks = {spec.key: _task_stats(records, spec.key, profile.n_boot) for spec in profile.tasks}
    _holm_in_place(tasks)
    classes = {}
    for spec in profile.tasks:
        per = {name: _task_stats(records, spec.key, profile.n_boot, str(v))
               for name, v in labels.get(spec.key, {}).items() if int(v) != 0}
        _holm_in_place(per)
        classes[spec.key] = per
    primary = tasks[profile.source.key]
    decision = None
    if primary.get("complete"):
        ref = primary["comparisons"].get("winners_vs_reference_scaled", {})
        decision = bs.decide(primary["D"], ref.get("p_holm"), primary["winner_sd"], primary["genotype_sd"]).to_dict()
    long_key = profile.source.key + LONG
    long_stats = _task_stats(records, long_key, profile.n_boot)
    standard, standard_seeds = _arm_scores(records, profile.source.key)
    long, long_seeds = _arm_scores(records, long_key)
    taus = {}
    if standard and long:
        taus["standard_vs_long"] = bs.kendall_between(standard, long)
        taus["seed_ceiling_standard"] = _seed_tau(standard_seeds, long)
        taus["seed_ceiling_long"] = _seed_tau(long_seeds, long)
    summary = {"profile": profile.name, "trainings": len(records), "decision": decision, "tasks": tasks,
               "classes": classes, "long_check": long_stats, "taus": taus,
               "arms": store.data.get("meta", {}).get("arms", {}), "rule": bs.decide.__doc__.split("\n\n")[0]}
    atomic_write_json(out / SUMMARY_JSON, summary)
    atomic_write_text(out / SUMMARY_MD, budget_markdown(summary))
    return summary


def _f(v: Any, digits: int = 3) -> str:
    return "-" if v is None else (f"{v:+.{digits}f}" if isinstance(v, float) else str(v))


def _p(v: Any) -> str:
    return "-" if v is None else f"{v:.3f}"


def budget_markdown(summary: dict[str, Any]) -> str:
    d = summary.get("decision") or {}
    lines = [f"# Budget study ({summary['profile']}): {d.get('verdict', 'not complete')}", "",
             d.get("reason", "the search task's trainings are not complete yet"), "",
             "| task | D | 90% interval | p | winner sd | genotype sd | vs reference (Holm p) | vs nnU-Net (Holm p) |",
             "|---|---|---|---|---|---|---|---|"]
    for task, s in summary["tasks"].items():
        if not s.get("complete"):
            lines.append(f"| {task} | incomplete | | | | | | |")
            continue
        c = s["comparisons"]
        ref, nn = c.get("winners_vs_reference_scaled", {}), c.get("winners_vs_nnunet_scaled", {})
        lines.append(f"| {task} | {_f(s['D']['d'])} | {_f(s['D']['low'])} .. {_f(s['D']['high'])} | "
                     f"{_p(s['D']['p'])} | {_f(s['winner_sd'])} | {_f(s['genotype_sd'])} | "
                     f"{_f(ref.get('diff'))} ({_p(ref.get('p_holm'))}) | "
                     f"{_f(nn.get('diff'))} ({_p(nn.get('p_holm'))}) |")
    taus = summary.get("taus") or {}
    if taus:
        lines += ["", "Kendall tau, standard vs long budget: "
                      f"{_f((taus.get('standard_vs_long') or {}).get('tau'))}; between two seeds (ceiling): standard "
                      f"{_f((taus.get('seed_ceiling_standard') or {}).get('tau'))}, long "
                      f"{_f((taus.get('seed_ceiling_long') or {}).get('tau'))}"]
    return "\n".join(lines) + "\n"
