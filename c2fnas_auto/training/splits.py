"""Cross-validation splits, shared by every fold, the search and evaluation.

The split is drawn once (seeded) and stored as `splits_final.json` in the preprocessed
task folder; later calls only read it, so folds started in parallel, the search and the
evaluation all agree on which case is validation for which fold.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from c2fnas_auto.errors import InputError
from c2fnas_auto.preprocessing.storage import dataset_case_ids, list_dataset_cases
from c2fnas_auto.utils.io import create_json_once, load_json

SPLITS_FILE = "splits_final.json"


def _finished_cases(preprocessed_dir: Path) -> list[str]:
    """The dataset's own finished cases (never leftovers of cases removed from dataset.json)."""
    return list_dataset_cases(preprocessed_dir)


def make_splits(case_ids: list[str], num_folds: int = 5, seed: int = 12345) -> list[dict]:
    """Shuffle with `seed` and deal the cases into folds.

    With fewer cases than folds there are as many folds as cases (leave-one-out), so
    no fold has an empty validation set.
    """
    ids = sorted(case_ids)
    if not ids:
        raise InputError("cannot make cross-validation splits: the preprocessed task has no cases")
    k = min(num_folds, len(ids))
    order = np.random.RandomState(seed).permutation(len(ids))
    folds = [sorted(ids[i] for i in order[f::k]) for f in range(k)]
    return [{"train": sorted(c for g, fold in enumerate(folds) if g != f for c in fold), "val": folds[f]}
            for f in range(k)]


def get_splits(preprocessed_dir: str | Path, num_folds: int = 5, seed: int = 12345) -> list[dict]:
    """The task's splits: read `splits_final.json`, creating it first if absent."""
    preprocessed_dir = Path(preprocessed_dir)
    path = preprocessed_dir / SPLITS_FILE
    if not path.is_file():
        create_json_once(path, make_splits(_finished_cases(preprocessed_dir), num_folds, seed))
    splits = load_json(path, "splits file")
    if not isinstance(splits, list) or not all(isinstance(s, dict) and "train" in s and "val" in s for s in splits):
        raise InputError(f"{path}: expected a list of {{'train': [...], 'val': [...]}} folds")

    foreign = sorted({c for s in splits for c in [*s["train"], *s["val"]]} - set(dataset_case_ids(preprocessed_dir)))
    if foreign:
        raise InputError(f"{path}: names {len(foreign)} case(s) not in the dataset ({', '.join(foreign[:3])}); "
                         f"delete the file to draw splits from the dataset's own cases")
    return splits


def fold_case_ids(preprocessed_dir: str | Path, fold: int | str) -> tuple[list[str], list[str]]:
    """(train_ids, val_ids) of `fold`; `"all"` trains and validates on every case."""
    splits = get_splits(preprocessed_dir)
    if str(fold) == "all":
        every = sorted(set(splits[0]["train"]) | set(splits[0]["val"]))
        return every, every
    try:
        f = int(fold)
    except (TypeError, ValueError):
        raise InputError(f"fold '{fold}' is not an integer or 'all'") from None
    if not 0 <= f < len(splits):
        raise InputError(f"fold {f} does not exist: {Path(preprocessed_dir) / SPLITS_FILE} has "
                         f"{len(splits)} folds (0-{len(splits) - 1})")
    return list(splits[f]["train"]), list(splits[f]["val"])
