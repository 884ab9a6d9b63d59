"""Finding trained experiments: `C2FNAS_results/<task>/<plans>__<genotype id>/fold_k`.

One folder per experiment (plans name + genotype short id, `paths.experiment_name`), so a
run with another genotype never overwrites the plans genotype's folds. Prediction by task
picks the plans genotype's experiment unless told another (`--genotype` or `--experiment`).
"""

from __future__ import annotations

import re
from pathlib import Path

from c2fnas_auto import paths
from c2fnas_auto.errors import C2FNASError, InputError
from c2fnas_auto.nas.checkpoint import checkpoint_file_name
from c2fnas_auto.planning.plans import Plans

EXPERIMENT_SEPARATOR = "__"


def genotype_id_of_folder(folder: Path) -> str | None:
    """The genotype short id a folder's name promises (`<plans>__<id>`), None for other names."""
    name = Path(folder).name
    if EXPERIMENT_SEPARATOR not in name:
        return None
    gid = name.rsplit(EXPERIMENT_SEPARATOR, 1)[1]
    return gid if re.fullmatch(r"[0-9a-f]{8}", gid) else None


def experiment_dir(task_name: str, plans_name: str, genotype) -> Path:
    """C2FNAS_results/<task>/<plans_name>__<genotype short id>: where one experiment's folds live."""
    return paths.results_dir(task_name, paths.experiment_name(plans_name, genotype.short_id()))


def task_results_dir(task: str | int) -> Path:
    """C2FNAS_results/<task folder>: via the raw folder when present, else by name in the results root
    (a prediction machine may hold results only)."""
    try:
        return paths.results_root() / paths.task_name_from_id(task)
    except C2FNASError:
        root = paths.results_root()
        text = str(task)
        if text.isdigit():
            pattern = re.compile(rf"^(Task0*{int(text)}|Dataset0*{int(text)})_")
            found = [p for p in root.iterdir() if p.is_dir() and pattern.match(p.name)] if root.is_dir() else []
        else:
            found = [root / paths.check_task_name(text)] if (root / paths.check_task_name(text)).is_dir() else []
        if len(found) != 1:
            raise InputError(f"{root}: no single results folder for task {task} (found {len(found)})") from None
        return found[0]


def list_experiments(task_dir: Path) -> list[Path]:
    """Sub-folders of a task's results that hold at least one fold_* folder (not `search/`)."""
    if not task_dir.is_dir():
        return []
    return sorted(p for p in task_dir.iterdir()
                  if p.is_dir() and any(q.is_dir() and q.name.startswith("fold_") for q in p.iterdir()))


def _plans_genotype_id(task_name: str, plans_name: str) -> str | None:
    """Short id of the genotype in the task's preprocessed plans.json, None when there is none to read."""
    try:
        plans_file = paths.preprocessed_dir(task_name) / "plans.json"
    except C2FNASError:
        return None
    if not plans_file.is_file():
        return None
    plans = Plans.load(plans_file)
    if plans.plans_name != plans_name or plans.genotype is None:
        return None
    return plans.genotype.short_id()


def find_experiment(task: str | int, plans_name: str = paths.DEFAULT_PLANS_NAME, genotype=None,
                    experiment: str | None = None) -> Path:
    """The results folder of one experiment of `task`.

    `experiment` names the folder; `genotype` (a Genotype) selects `<plans_name>__<its id>`;
    neither: the plans genotype's experiment, or the only experiment of `plans_name` when
    the plans cannot be read here."""
    if experiment is not None and genotype is not None:
        raise InputError("give either an experiment name or a genotype, not both")
    task_dir = task_results_dir(task)
    found = list_experiments(task_dir)
    names = ", ".join(p.name for p in found) or "none"
    if experiment is not None:
        folder = task_dir / experiment
        if folder not in found:
            raise InputError(f"{folder}: no trained experiment of that name (found: {names})")
        return folder
    gid = genotype.short_id() if genotype is not None else _plans_genotype_id(task_dir.name, plans_name)
    if gid is not None:
        folder = task_dir / paths.experiment_name(plans_name, gid)
        if folder in found:
            return folder
        what = "the given genotype" if genotype is not None else "the plans genotype"
        raise InputError(f"{folder}: {what} ({gid}) has no trained folds (found: {names}; "
                         "choose one with --experiment NAME or --genotype FILE)")
    mine = [p for p in found if p.name.startswith(plans_name + EXPERIMENT_SEPARATOR) or p.name == plans_name]
    if len(mine) != 1:
        raise InputError(f"{task_dir}: {len(mine)} experiments of plans {plans_name} and no plans.json to pick "
                         f"the plans genotype's (found: {names}); choose one with --experiment NAME")
    return mine[0]


def available_folds(model_folder: Path, checkpoint: str) -> list[str]:
    """Folds with a `checkpoint_<checkpoint>.pth`, in numeric order, then `all`."""
    name = checkpoint_file_name(checkpoint)
    found = [p.name[len("fold_"):] for p in Path(model_folder).glob("fold_*") if (p / name).is_file()]
    return sorted(found, key=lambda f: (not f.isdigit(), int(f) if f.isdigit() else 0, f))
