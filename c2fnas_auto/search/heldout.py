"""Cases the search never sees, so a searched network can be scored without selection bias.

The search picks its winner on its *selection* cases (fold-0 validation of the source
task). Quality claims need other cases: the task's `imagesTs`/`labelsTs` when every test
case has a label, otherwise a seeded share of the training cases set aside *before* the
search starts and removed from both its training and its selection cases.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from c2fnas_auto.data.dataset import load_dataset
from c2fnas_auto.errors import C2FNASError
from c2fnas_auto.paths import raw_root
from c2fnas_auto.training.splits import fold_case_ids, get_splits

TEST_SOURCE = "imagesTs"
CARVED_SOURCE = "carved"
NO_SOURCE = "none"


@dataclass
class HeldOut:
    """`source`: imagesTs (raw test cases with labels), carved (preprocessed training cases
    kept out of the search) or none (`fraction` 0 and no labelled test cases)."""

    source: str
    case_ids: list[str]
    seed: int
    fraction: float
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # imagesTs: case -> images, label

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "HeldOut":
        return cls(source=d["source"], case_ids=list(d["case_ids"]), seed=int(d["seed"]),
                   fraction=float(d["fraction"]), files=dict(d.get("files", {})))


def _labelled_test_cases(task_name: str) -> dict[str, dict[str, Any]]:
    """{case: {images, label}} when the raw task has test cases and all carry labels, else {}."""
    folder = raw_root() / task_name
    if not (folder / "dataset.json").is_file():
        return {}
    test = load_dataset(folder).test
    if not test or any(c.label_file is None for c in test):
        return {}
    return {c.case_id: {"images": [str(p) for p in c.image_files], "label": str(c.label_file)} for c in test}


def all_training_cases(preprocessed: Path) -> list[str]:
    """Every case of the task's cross-validation splits (the cases the search may draw from)."""
    splits = get_splits(preprocessed)
    return sorted(set(splits[0]["train"]) | set(splits[0]["val"]))


def heldout_cases(task_name: str, preprocessed: Path, fraction: float = 0.2, seed: int = 0) -> HeldOut:
    """The held-out set of a search on `task_name` (deterministic in its arguments)."""
    if not 0.0 <= fraction < 1.0:
        raise C2FNASError(f"--heldout-fraction {fraction}: must be in [0, 1)")
    test = _labelled_test_cases(task_name)
    if test:
        return HeldOut(TEST_SOURCE, sorted(test), seed, fraction, files=test)
    cases = all_training_cases(Path(preprocessed))
    n = int(round(fraction * len(cases)))
    if fraction > 0 and n == 0:
        n = 1
    if n and len(cases) - n < 2:
        raise C2FNASError(f"{preprocessed}: {len(cases)} cases cannot spare {n} held-out case(s) and still "
                          "train and select (lower --heldout-fraction or add labelled imagesTs/labelsTs)")
    chosen = sorted(random.Random(seed).sample(cases, n)) if n else []
    return HeldOut(CARVED_SOURCE if n else NO_SOURCE, chosen, seed, fraction)


def search_cases(preprocessed: Path, fold: int, heldout: HeldOut) -> tuple[list[str], list[str]]:
    """(train, selection) of the search: the fold's split with every held-out case removed."""
    train, val = fold_case_ids(preprocessed, fold)
    out = set(heldout.case_ids)
    train = [c for c in train if c not in out]
    val = [c for c in val if c not in out]
    if not train or not val:
        raise C2FNASError(f"{preprocessed}: fold {fold} minus the {len(out)} held-out case(s) leaves "
                          f"{len(train)} training / {len(val)} selection cases; both must be non-empty")
    return train, val
