"""Where raw, preprocessed and result data live, and how a task id becomes a folder.

The three roots come from environment variables (as in nnU-Net) so that the same
commands work on a laptop and on a cluster without editing any file. A task is named
by its number (`7`, `"007"`) or its full folder name (`Task07_Pancreas`,
`Dataset007_Pancreas`); MSD and nnU-Net v2 folder names are both recognised. Nothing else
is a task: a name like `..` or `a/b` would place plans, data or results outside the roots,
so every derived folder checks that its task name is a TaskNN_* / DatasetNNN_* name and one
path component.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from c2fnas_auto.errors import PathsError, TaskNotFoundError

RAW_ENV = "C2FNAS_raw"
PREPROCESSED_ENV = "C2FNAS_preprocessed"
RESULTS_ENV = "C2FNAS_results"
DEFAULT_PLANS_NAME = "C2FNASPlans"
PLANS_FILE = "plans.json"  # in preprocessed_dir(task): the single source of truth of a task
SEARCH_GENOTYPE_FILE = "genotype.json"  # the search's winner (with provenance) in search_results_dir(task)

# Task07_Pancreas, Task007_X (MSD / nnU-Net v1) and Dataset007_X (nnU-Net v2).
_TASK_FOLDER = re.compile(r"^(Task|Dataset)(\d+)_(.+)$")
_TASK_PREFIX = re.compile(r"^(?:Task|Dataset)(\d+)$")


def _root_from_env(var: str) -> Path:
    value = os.environ.get(var, "").strip()
    if not value:
        raise PathsError(f"environment variable {var} is not set; set it to a folder, "
                         f"e.g. `export {var}=/path/to/{var.split('_', 1)[1]}`")
    return Path(value).expanduser()


def raw_root() -> Path:
    """The folder holding raw task folders (C2FNAS_raw)."""
    return _root_from_env(RAW_ENV)


def preprocessed_root() -> Path:
    """The folder holding fingerprints, plans and preprocessed arrays (C2FNAS_preprocessed)."""
    return _root_from_env(PREPROCESSED_ENV)


def results_root() -> Path:
    """The folder holding trained models and their logs (C2FNAS_results)."""
    return _root_from_env(RESULTS_ENV)


def check_task_name(name: str) -> str:
    """`name` if it is a TaskNN_* / DatasetNNN_* folder name and a single path component."""
    text = str(name)
    if _TASK_FOLDER.match(text) is None or not _is_component(text):
        raise TaskNotFoundError(f"task {text!r}: not a task folder name (TaskNN_* or DatasetNNN_*; or pass the "
                                "task id, e.g. 7)")
    return text


def _is_component(name: str) -> bool:
    """One path component: no separators, no NUL, not '.' or '..'."""
    return bool(name) and name not in (".", "..") and not any(c in name for c in ("/", "\\", "\0"))


def parse_task_folder_name(name: str) -> int | None:
    """The task number of a folder named Task07_X / Dataset007_X, or None."""
    m = _TASK_FOLDER.match(name)
    return int(m.group(2)) if m else None


def list_task_folders(root: Path) -> list[Path]:
    """All task-like folders in `root`, sorted by name (hidden folders ignored)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and parse_task_folder_name(p.name) is not None)


def _task_number(task: str | int) -> int | None:
    """7 / "7" / "007" / "Task07" / "Dataset007" -> 7; a full folder name -> None."""
    if isinstance(task, bool):
        return None
    if isinstance(task, int):
        return task
    text = str(task).strip()
    if text.isdigit():
        return int(text)
    m = _TASK_PREFIX.match(text)
    return int(m.group(1)) if m else None


def resolve_task(task: str | int, root: Path | None = None) -> Path:
    """The one raw task folder that `task` names; none or several -> TaskNotFoundError."""
    root = Path(root) if root is not None else raw_root()
    if not root.is_dir():
        raise TaskNotFoundError(f"{root}: raw data folder does not exist (check {RAW_ENV})")
    found = list_task_folders(root)
    found_names = ", ".join(p.name for p in found) or "no task folders"
    number = _task_number(task)
    if number is None:
        name = check_task_name(str(task).strip())
        candidate = root / name
        if candidate.is_dir():
            return candidate
        raise TaskNotFoundError(f"task {task!r}: no folder {name!r} in {root} (found: {found_names})")
    matches = [p for p in found if parse_task_folder_name(p.name) == number]
    if not matches:
        raise TaskNotFoundError(f"task {task!r}: no Task{number:02d}_* or Dataset{number:03d}_* folder "
                                f"in {root} (found: {found_names})")
    if len(matches) > 1:
        names = ", ".join(p.name for p in matches)
        raise TaskNotFoundError(f"task {task!r}: several folders match in {root} ({names}); "
                                "pass the full folder name")
    return matches[0]


def task_name_from_id(task: str | int, root: Path | None = None) -> str:
    """The folder name of the task (e.g. 'Task07_Pancreas'), used to name derived folders."""
    return resolve_task(task, root).name


def preprocessed_dir(task_name: str) -> Path:
    """C2FNAS_preprocessed/<task_name>: fingerprint, plans, preprocessed cases, search state."""
    return preprocessed_root() / check_task_name(task_name)


def results_dir(task_name: str, plans_name: str = DEFAULT_PLANS_NAME) -> Path:
    """C2FNAS_results/<task_name>/<plans_name>: one sub-folder per fold."""
    if not _is_component(str(plans_name)):
        raise TaskNotFoundError(f"plans or experiment name {plans_name!r}: must be one folder name "
                                "(no '/', '\\', '.' or '..')")
    return results_root() / check_task_name(task_name) / plans_name


def fold_dir(task_name: str, fold: int | str, plans_name: str = DEFAULT_PLANS_NAME) -> Path:
    """results_dir/fold_<k> (fold_all for the 'all' fold)."""
    return results_dir(task_name, plans_name) / f"fold_{fold}"


def experiment_name(plans_name: str, genotype_id: str) -> str:
    """'<plans_name>__<genotype short id>': one results folder per trained experiment, as
    nnU-Net's Trainer__Plans__configuration, so another genotype never overwrites a fold."""
    return f"{plans_name}__{genotype_id}"


def search_results_dir(task_name: str) -> Path:
    """C2FNAS_results/<task_name>/search: the search's state, report, supernet and winner.
    Results, not preprocessed data: deleting regenerable preprocessed data keeps the search."""
    return results_root() / check_task_name(task_name) / "search"
