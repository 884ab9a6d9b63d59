"""A tiny task with two folds trained for a few iterations, shared by the deployment tests.

Two folds (a custom splits_final.json) keep it cheap; tests that change files copy it."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.conftest import _set_roots

# Two tiles of the 24x40x40 cases (along z), not the 80 of an 8x16x16 patch: the final validation
# of the four trainings mirrors every tile 8 times, and at 8x16x16 that was most of the fixture's
# minutes; two tiles still make every sliding window (ours, the bundle's) blend overlapping tiles.
SMALL_PATCH = (16, 40, 40)


@dataclass
class TrainedTask:
    root: Path
    task_name: str
    raw_dir: Path
    experiment_dir: Path  # the plans genotype's experiment
    other_dir: Path  # the same folds trained with another genotype
    plans: object


def train_fold(task: str, fold: int, genotype_file: str | None = None, final_validation: bool = True):
    from c2fnas_auto.training.trainer import Trainer, TrainerOptions

    opts = TrainerOptions(epochs=1, iters_per_epoch=2, val_iters=1, batch_size=2, device="cpu", seed=fold,
                          patch_size=SMALL_PATCH, final_validation=final_validation, progress=False,
                          genotype_file=genotype_file, save_probabilities=True)
    trainer = Trainer(task, fold, opts)
    trainer.run()
    return trainer.fold_dir.parent


@pytest.fixture(scope="session")
def trained_task(tiny_task, tmp_path_factory) -> TrainedTask:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("trained_task")
    for sub in ("raw", "preprocessed"):
        shutil.copytree(tiny_task.root / sub, root / sub)
    (root / "results").mkdir()
    pre = root / "preprocessed" / tiny_task.task_name
    from c2fnas_auto.preprocessing.storage import list_cases

    cases = sorted(list_cases(pre))
    half = len(cases) // 2
    splits = [{"train": cases[half:], "val": cases[:half]}, {"train": cases[:half], "val": cases[half:]}]
    (pre / "splits_final.json").write_text(json.dumps(splits))
    from c2fnas_auto.nas.genotype import Genotype

    g = tiny_task.plans.genotype
    other = Genotype(list(g.levels), ["3d" if op != "3d" else "2d" for op in g.ops],
                     provenance={"source": "deployment tests: the plans genotype with other ops"})
    other_file = root / "other_genotype.json"
    other.save(other_file)
    _set_roots(root)
    try:
        exp = other_dir = None
        for fold in (0, 1):
            exp = train_fold("98", fold)
            other_dir = train_fold("98", fold, genotype_file=str(other_file))
    finally:
        _set_roots(tiny_task.root)
    return TrainedTask(root, tiny_task.task_name, root / "raw" / tiny_task.task_name, exp, other_dir,
                       tiny_task.plans)


@pytest.fixture
def trained(trained_task, tiny_task):
    """The trained task with its environment variables set for the test."""
    _set_roots(trained_task.root)
    yield trained_task
    _set_roots(tiny_task.root)
