"""Choosing among a task's trained experiments by cross-validation, ensembles included.

Each experiment's score is its pooled cross-validation Dice: every fold's final-validation
cases together (`fold_k/validation/summary.json`), averaged per label and then over the
foreground labels, as `evaluation.evaluate.summarize` does for one folder. An ensemble of
experiments is scored the same way from their saved validation probabilities
(`validation/<case>.npz`, written by `c2fnas_train --save-probabilities`): the mean of the
members' softmax per case, argmax, written in the case's geometry and evaluated against the
raw reference labels. The best candidate and how to predict with it go to
`C2FNAS_results/<task>/best_configuration.json`.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from c2fnas_auto.data.image_io import write_segmentation
from c2fnas_auto.deployment.errors import DeploymentError
from c2fnas_auto.evaluation.evaluate import evaluate_folders, summarize
from c2fnas_auto.inference.export import geometry_from_properties, labels_from_probabilities
from c2fnas_auto.utils.io import atomic_write_json, load_json

BEST_FILE = "best_configuration.json"
ENSEMBLES_DIR = "ensembles"
ENSEMBLE_JOIN = "--"


@dataclass
class Candidate:
    """One way to predict: a single experiment or an ensemble of several."""

    name: str
    experiments: list[str]
    folds: list[str]
    n_cases: int
    dice: float
    nsd: float
    per_label_dice: dict[str, float] = field(default_factory=dict)
    summary_file: str = ""


def fold_summaries(experiment_dir: Path) -> dict[str, dict]:
    """fold name -> that fold's validation summary, for every cross-validation fold that has one
    (not `fold_all`: it validates on its own training cases)."""
    out = {}
    for fold_dir in sorted(Path(experiment_dir).glob("fold_*")):
        f = fold_dir / "validation" / "summary.json"
        if fold_dir.name == "fold_all":
            continue
        if f.is_file():
            out[fold_dir.name[len("fold_"):]] = load_json(f, "validation summary")
    return out


def pooled_summary(summaries: Sequence[dict], labels: dict[str, int]) -> dict:
    """One summary over the cases of several folds' summaries (what 'cross-validation Dice' means here)."""
    per_case = [case for s in summaries for case in s.get("per_case", [])]
    return {"n_cases": len(per_case), **summarize(per_case, labels)}


def experiment_candidate(experiment_dir: Path, labels: dict[str, int], folds: Sequence[str]) -> Candidate:
    summaries = fold_summaries(experiment_dir)
    missing = [f for f in folds if f not in summaries]
    if missing:
        raise DeploymentError(f"{experiment_dir}: fold(s) {', '.join(missing)} have no validation/summary.json "
                              "(train them with final validation)")
    pooled = pooled_summary([summaries[f] for f in folds], labels)
    return _candidate(Path(experiment_dir).name, [Path(experiment_dir).name], folds, pooled, "")


def _candidate(name: str, members: list[str], folds: Sequence[str], pooled: dict, summary_file: str) -> Candidate:
    fg = pooled["foreground_mean"]
    return Candidate(name, members, list(folds), int(pooled["n_cases"]), float(fg["Dice"]), float(fg["NSD"]),
                     {k: float(v["Dice"]) for k, v in pooled["mean"].items()}, summary_file)


def validation_cases(experiment_dir: Path, fold: str) -> list[str]:
    summary = load_json(Path(experiment_dir) / f"fold_{fold}" / "validation" / "summary.json", "validation summary")
    return [c["case_id"] for c in summary.get("per_case", [])]


def _probabilities(experiment_dir: Path, fold: str, case_id: str) -> np.ndarray:
    f = Path(experiment_dir) / f"fold_{fold}" / "validation" / f"{case_id}.npz"
    if not f.is_file():
        raise DeploymentError(f"{f}: no saved validation probabilities (train with --save-probabilities to "
                              "score ensembles)")
    try:
        with np.load(f) as z:
            return np.asarray(z["probabilities"], dtype=np.float32)
    except Exception as exc:  # truncated or foreign file
        raise DeploymentError(f"{f}: cannot read probabilities ({type(exc).__name__}: {exc})") from None


def score_ensemble(experiment_dirs: Sequence[Path], folds: Sequence[str], labels: dict[str, int],
                   reference_folder: Path, out_dir: Path, progress: bool = True) -> Candidate:
    """Average the members' validation softmax case by case, write the argmax, evaluate it."""
    first = experiment_dirs[0]
    jobs = []
    for fold in folds:
        cases = validation_cases(first, fold)
        for other in experiment_dirs[1:]:
            if sorted(validation_cases(other, fold)) != sorted(cases):
                raise DeploymentError(f"{other}: fold {fold} validated other cases than {first.name} "
                                      "(experiments of different splits cannot be ensembled)")
        jobs += [(fold, c) for c in cases]
    out_dir.mkdir(parents=True, exist_ok=True)
    for fold, case_id in tqdm(jobs, desc=f"ensemble {out_dir.name}", unit="case", disable=not progress):
        probs = sum(_probabilities(e, fold, case_id) for e in experiment_dirs) / len(experiment_dirs)
        props = load_json(first / f"fold_{fold}" / "validation" / f"{case_id}.json", "case properties")
        write_segmentation(labels_from_probabilities(probs, None), geometry_from_properties(props),
                           out_dir / f"{case_id}.nii.gz")
    summary_file = out_dir / "summary.json"
    summary = evaluate_folders(reference_folder, out_dir, labels, summary_file, progress=progress,
                               case_ids=[c for _, c in jobs])
    pooled = {"n_cases": len(summary["per_case"]), "mean": summary["mean"],
              "foreground_mean": summary["foreground_mean"]}
    names = [e.name for e in experiment_dirs]
    return _candidate(ENSEMBLE_JOIN.join(names), names, folds, pooled, str(summary_file))


def common_folds(experiment_dirs: Sequence[Path]) -> list[str]:
    """Folds validated by every experiment (an ensemble is scored on the cases all of them saw)."""
    sets = [set(fold_summaries(e)) for e in experiment_dirs]
    common = set.intersection(*sets) if sets else set()
    return sorted(common, key=lambda f: (not f.isdigit(), int(f) if f.isdigit() else 0, f))


def _score(c: Candidate) -> float:
    return -math.inf if math.isnan(c.dice) else c.dice


def predict_command(task: str, best: Candidate) -> str:
    return (f"c2fnas_predict -i INPUT_FOLDER -o OUTPUT_FOLDER -t {task} --experiment {' '.join(best.experiments)}"
            + (" -f " + " ".join(best.folds) if best.folds else ""))


def find_best_configuration(task_name: str, experiment_dirs: Sequence[Path], reference_folder: Path | None,
                            labels: dict[str, int], out_file: Path, max_ensemble: int = 2,
                            progress: bool = True) -> dict:
    """Score every experiment and every ensemble of up to `max_ensemble` of them; write and return
    the decision. Without `reference_folder` or saved probabilities ensembles are skipped (and said so)."""
    experiment_dirs = [Path(e) for e in experiment_dirs]
    if not experiment_dirs:
        raise DeploymentError(f"{out_file.parent}: no trained experiment with validation results")
    folds = common_folds(experiment_dirs)
    if not folds:
        raise DeploymentError(f"{out_file.parent}: the experiments share no validated fold")
    candidates = [experiment_candidate(e, labels, folds) for e in experiment_dirs]
    skipped: list[str] = []
    for k in range(2, min(max_ensemble, len(experiment_dirs)) + 1):
        for members in itertools.combinations(experiment_dirs, k):
            name = ENSEMBLE_JOIN.join(m.name for m in members)
            if reference_folder is None:
                skipped.append(f"{name}: no reference labels (raw task folder) to score it")
                continue
            try:
                candidates.append(score_ensemble(members, folds, labels, reference_folder,
                                                 out_file.parent / ENSEMBLES_DIR / name, progress))
            except DeploymentError as exc:  # e.g. probabilities not saved: say so, rank the rest
                skipped.append(f"{name}: {exc}")
    ranked = sorted(candidates, key=_score, reverse=True)
    best = ranked[0]
    decision = {
        "task": task_name, "folds": folds, "metric": "pooled cross-validation foreground Dice",
        "best": asdict(best), "predict_command": predict_command(task_name, best),
        "predict": {"experiments": best.experiments, "folds": best.folds,
                    "postprocessing": "the experiment's own postprocessing.json" if len(best.experiments) == 1
                    else "none (ensembles are not postprocessed)"},
        "candidates": [asdict(c) for c in ranked], "ensembles_skipped": skipped}
    atomic_write_json(out_file, decision)
    return decision
