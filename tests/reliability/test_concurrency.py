"""Two folds trained at the same time on one task share splits and plans without clobbering.

`splits_final.json` is created once (hard-link into place, first writer wins) and read
by both; plans are only read by training. Both processes start together so both find
no splits file and race to create it.
"""

from __future__ import annotations

import json
import shutil

import pytest

from c2fnas_auto.utils.testing import cli_env, file_digest, finish, stale_temporaries, start_cli

from .helpers import require_ok

TRAIN_ARGS = ["--epochs", 1, "--iters-per-epoch", 2, "--val-iters", 1, "--device", "cpu", "--num-workers", 0,
              "--no-final-validation", "--no-progress"]


@pytest.mark.slow
def test_two_folds_in_parallel_share_one_splits_file(copy_task, tmp_path):
    from c2fnas_auto.inference.experiments import experiment_dir
    from c2fnas_auto.training.splits import SPLITS_FILE, get_splits

    pre = copy_task.preprocessed_dir
    (pre / SPLITS_FILE).unlink(missing_ok=True)
    plans_digest = file_digest(pre / "plans.json")
    # what a single run creates: the same call on an untouched copy of the task
    single = tmp_path / "single"
    shutil.copytree(pre, single)
    expected = get_splits(single)

    env = cli_env(copy_task.root)
    procs = [start_cli("train", [copy_task.task_name, fold, *TRAIN_ARGS], env, tmp_path / "logs") for fold in (0, 1)]
    results = [finish(p, timeout=600) for p in procs]
    for res in results:
        require_ok(res)

    splits = json.loads((pre / SPLITS_FILE).read_text())
    assert splits == expected
    assert file_digest(pre / "plans.json") == plans_digest, "training changed plans.json"
    for fold in (0, 1):
        experiment = experiment_dir(copy_task.task_name, copy_task.plans.plans_name, copy_task.plans.genotype)
        fold_dir = experiment / f"fold_{fold}"
        assert (fold_dir / "checkpoint_final.pth").is_file(), sorted(p.name for p in fold_dir.iterdir())
    assert not stale_temporaries(copy_task.root)
