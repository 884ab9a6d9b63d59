"""On-disk format of preprocessed cases (documentation/reference/architecture.md).

`data/<case>.npy` (float32 (C, z, y, x)), `data/<case>_seg.npy` (int8 (1, z, y, x))
and `data/<case>.json` (properties). The properties file is written last, so a case
counts as finished only when it exists, parses, and its arrays are there: a killed
worker leaves at most an unfinished case that the next run redoes. `data/dataset_cases.json`
names the dataset's training cases at the last preprocessing run: only those may be
listed for splits and training (`list_dataset_cases`), never a leftover of a case since
removed from dataset.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import numpy as np

from c2fnas_auto.errors import InputError
from c2fnas_auto.utils.io import load_json

DATA_SUBDIR = "data"
CASES_FILE = "dataset_cases.json"


def data_dir(preprocessed_dir: str | Path) -> Path:
    """The folder holding the case files (accepts the task folder or its data/ folder)."""
    p = Path(preprocessed_dir)
    return p if p.name == DATA_SUBDIR and not (p / DATA_SUBDIR).is_dir() else p / DATA_SUBDIR


def case_paths(folder: Path, case_id: str) -> tuple[Path, Path, Path]:
    """(data .npy, seg .npy, properties .json) of a case inside a data folder."""
    return folder / f"{case_id}.npy", folder / f"{case_id}_seg.npy", folder / f"{case_id}.json"


def read_properties(path: Path) -> dict[str, Any] | None:
    """The properties dict, or None when missing or unreadable (= case not finished)."""
    try:
        props = load_json(path, "case properties")
    except InputError:
        return None
    return props if isinstance(props, dict) and "case_id" in props else None


def is_case_finished(folder: Path, case_id: str) -> bool:
    npy, seg, props_path = case_paths(folder, case_id)
    props = read_properties(props_path)
    if props is None or not npy.is_file():
        return False
    return seg.is_file() or not props.get("has_segmentation", False)


def list_cases(preprocessed_dir: str | Path, case_ids: Iterable[str] | None = None) -> list[str]:
    """Sorted ids of the finished cases in the folder; with `case_ids`, only those among them.

    Without `case_ids` this lists whatever the folder holds, including cases since removed
    from dataset.json: splits and training use `list_dataset_cases` instead."""
    folder = data_dir(preprocessed_dir)
    if not folder.is_dir():
        return []
    if case_ids is None:
        ids = [p.name[: -len(".json")] for p in folder.glob("*.json") if ".tmp-" not in p.name]
    else:
        ids = list(case_ids)
    return sorted(i for i in set(ids) if is_case_finished(folder, i))


def dataset_case_ids(preprocessed_dir: str | Path) -> list[str]:
    """The training case ids of dataset.json, as recorded by the last preprocessing run."""
    path = data_dir(preprocessed_dir) / CASES_FILE
    if not path.is_file():
        raise InputError(f"{path}: missing: this folder was preprocessed by an older version or not at all "
                         f"(rerun c2fnas_plan_and_preprocess)")
    try:
        ids = load_json(path, "case list")["training"]
    except (InputError, KeyError, TypeError) as exc:
        raise InputError(f"{path}: unreadable case list ({exc}); rerun c2fnas_plan_and_preprocess") from None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise InputError(f"{path}: 'training' must be a list of case ids; rerun c2fnas_plan_and_preprocess")
    return ids


def list_dataset_cases(preprocessed_dir: str | Path) -> list[str]:
    """Sorted ids of the finished cases that belong to the dataset (what splits and training use)."""
    return list_cases(preprocessed_dir, dataset_case_ids(preprocessed_dir))


def load_case(preprocessed_dir: str | Path, case_id: str, mmap: bool = True
              ) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """(data (C, z, y, x), seg (1, z, y, x) or None, properties) of a finished case."""
    folder = data_dir(preprocessed_dir)
    npy, seg_path, props_path = case_paths(folder, case_id)
    props = read_properties(props_path)
    if props is None or not npy.is_file():
        raise InputError(f"{props_path}: preprocessed case '{case_id}' is missing or unfinished "
                         f"(rerun c2fnas_plan_and_preprocess)")
    mode = "r" if mmap else None
    try:
        data = np.load(npy, mmap_mode=mode, allow_pickle=False)
        seg = np.load(seg_path, mmap_mode=mode, allow_pickle=False) if seg_path.is_file() else None
    except (OSError, ValueError) as exc:
        raise InputError(f"{npy}: cannot read preprocessed case ({exc})") from None
    return data, seg, props
