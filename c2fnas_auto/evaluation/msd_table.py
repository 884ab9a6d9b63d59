"""Collect every task's cross-validation summaries into one Decathlon-style table.

Walks `C2FNAS_results/<task>/<experiment>/fold_k/validation/summary.json` (an experiment
is `<plans>__<genotype id>`: each genotype trained on a task gets its own row), pools the per-case
metrics of the trained folds (so the mean is over all validated cases, as a 5-fold
cross-validation reports it) and lays out one row per task with one column per class,
like the MSD table of the C2FNAS paper. Folders without fold_* (the search's) are skipped. Folds without a summary
are listed as missing.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from c2fnas_auto.utils.io import atomic_write_json, atomic_write_text, load_json

_FOLD = re.compile(r"^fold_(\d+)$")


@dataclass
class ClassResult:
    label: int
    name: str
    dice: float
    nsd: float
    n_cases: int


@dataclass
class TaskResult:
    task: str
    experiment: str
    trained_folds: list[int]
    missing_folds: list[int]
    classes: list[ClassResult] = field(default_factory=list)

    @property
    def mean_dice(self) -> float:
        vals = [c.dice for c in self.classes if not math.isnan(c.dice)]
        return float(np.mean(vals)) if vals else float("nan")

    @property
    def mean_nsd(self) -> float:
        vals = [c.nsd for c in self.classes if not math.isnan(c.nsd)]
        return float(np.mean(vals)) if vals else float("nan")


def _nanmean(values: list[float]) -> tuple[float, int]:
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return (float(np.mean(vals)) if vals else float("nan")), len(vals)


def collect_task(task_dir: Path, plans_dir: Path, num_folds: int = 5) -> TaskResult:
    """Pool the per-case metrics of every fold of one experiment that has a validation summary."""
    found = {int(m.group(1)): p for p in plans_dir.iterdir() if p.is_dir() and (m := _FOLD.match(p.name))}
    folds = sorted(set(range(num_folds)) | set(found))
    trained = [f for f in folds if f in found and (found[f] / "validation" / "summary.json").is_file()]
    result = TaskResult(task=task_dir.name, experiment=plans_dir.name, trained_folds=trained,
                        missing_folds=[f for f in folds if f not in trained])
    per_label: dict[int, dict] = {}
    for f in trained:
        summary = load_json(found[f] / "validation" / "summary.json", "validation summary")
        for case in summary.get("per_case", []):
            for key, m in case.get("metrics", {}).items():
                entry = per_label.setdefault(int(key), {"name": m.get("name", key), "dice": [], "nsd": []})
                entry["dice"].append(m.get("Dice", float("nan")))
                entry["nsd"].append(m.get("NSD", float("nan")))
    for label in sorted(per_label):
        e = per_label[label]
        dice, n = _nanmean(e["dice"])
        nsd, _ = _nanmean(e["nsd"])
        result.classes.append(ClassResult(label=label, name=str(e["name"]), dice=dice, nsd=nsd, n_cases=n))
    return result


def collect_results(results_root: str | os.PathLike, num_folds: int = 5) -> list[TaskResult]:
    """One TaskResult per `<task>/<experiment>` folder that holds at least one `fold_*` folder."""
    root = Path(results_root)
    out = []
    for task_dir in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        for plans_dir in sorted(p for p in task_dir.iterdir() if p.is_dir()):
            if any(_FOLD.match(p.name) for p in plans_dir.iterdir()):
                out.append(collect_task(task_dir, plans_dir, num_folds))
    return out


def _cell(x: float, scale: float = 100.0) -> str:
    return "-" if math.isnan(x) else f"{x * scale:.2f}"


def render_markdown(results: list[TaskResult], with_nsd: bool = True) -> str:
    """Markdown table: Dice (and NSD) in percent per class, then the task mean."""
    if not results:
        return "No trained folds found.\n"
    width = max(len(r.classes) for r in results)
    head = ["Task", "Experiment", "Folds"] + [f"Class {i + 1}" for i in range(width)] + ["Mean"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        folds = f"{len(r.trained_folds)}/{len(r.trained_folds) + len(r.missing_folds)}"
        if r.missing_folds:
            folds += " (missing " + ",".join(str(f) for f in r.missing_folds) + ")"
        cells = []
        for c in r.classes:
            text = f"{c.name}: {_cell(c.dice)}"
            if with_nsd:
                text += f" / {_cell(c.nsd)}"
            cells.append(text)
        cells += [""] * (width - len(r.classes))
        mean = _cell(r.mean_dice) + (f" / {_cell(r.mean_nsd)}" if with_nsd else "")
        lines.append("| " + " | ".join([r.task, r.experiment, folds, *cells, mean]) + " |")
    note = "\nValues: Dice" + (" / NSD" if with_nsd else "") + " in percent, pooled over the validated cases of " \
           "the trained folds (5-fold cross-validation, not the MSD test set).\n"
    return "\n".join(lines) + "\n" + note


def _jsonable(r: TaskResult) -> dict:
    d = asdict(r)
    d["mean_dice"], d["mean_nsd"] = r.mean_dice, r.mean_nsd
    return d


def write_msd_table(results_root: str | os.PathLike, out_prefix: str | os.PathLike,
                    num_folds: int = 5) -> tuple[list[TaskResult], str]:
    """Write `<out_prefix>.md` and `<out_prefix>.json`; returns the results and the markdown."""
    results = collect_results(results_root, num_folds)
    md = render_markdown(results)
    prefix = Path(out_prefix)
    atomic_write_text(prefix.parent / (prefix.name + ".md"), md)
    atomic_write_json(prefix.parent / (prefix.name + ".json"),
                      {"results_root": str(results_root), "tasks": [_jsonable(r) for r in results]})
    return results, md
