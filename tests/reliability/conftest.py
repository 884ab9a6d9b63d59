"""Fixtures of the reliability suite.

`raw_root`: a private copy of a tiny raw task (Task097, 3 training + 1 test case) that a
test may break on purpose. `trained_task`: one task planned, trained for one tiny epoch
and predicted end to end through the CLIs, in a folder whose path holds a space and
non-ASCII characters; the predict tests reuse its model.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from c2fnas_auto.utils.testing import CliResult, cli_env, run_cli

from .helpers import BROKEN_ID, E2E_ID, require_ok, task_folder


@pytest.fixture(scope="session")
def _raw_template(tmp_path_factory) -> Path:
    from c2fnas_auto.data.synthetic import make_synthetic_task

    root = tmp_path_factory.mktemp("raw_template")
    make_synthetic_task(root / "raw", task_id=BROKEN_ID, name="Broken", num_train=3, num_test=1,
                        shape=(10, 20, 20), spacing=(3.0, 1.0, 1.0), seed=1, progress=False)
    return root


@pytest.fixture
def raw_root(_raw_template, tmp_path) -> Path:
    """A root with raw/Task97_Broken (copied, free to damage) and no preprocessed/results yet."""
    root = tmp_path / "root"
    shutil.copytree(_raw_template / "raw", root / "raw")
    return root


@dataclass
class TrainedTask:
    root: Path
    task_folder: Path
    env: dict
    runs: dict[str, CliResult]
    prediction_dir: Path


@pytest.fixture(scope="session")
def trained_task(tmp_path_factory) -> TrainedTask:
    """make task -> plan -> train fold 0 (1 epoch x 2 iterations) -> predict, all as subprocesses,
    under '<tmp>/my data/données' so every stage meets a space and non-ASCII characters."""
    root = tmp_path_factory.mktemp("e2e") / "my data" / "données"
    env = cli_env(root)
    runs: dict[str, CliResult] = {}
    runs["make"] = require_ok(run_cli("make_synthetic_task", [
        "--raw", root / "raw", "--task-id", E2E_ID, "--name", "Spaced", "--num-train", 5, "--num-test", 4,
        "--shape", 16, 32, 32, "--seed", 3, "--no-progress"], env))
    folder = task_folder(root, E2E_ID)
    runs["plan"] = require_ok(run_cli("plan_and_preprocess", [
        "-t", E2E_ID, "-np", 1, "--gpu-memory-gb", 0.25, "--base-channels", 4, "--no-progress"], env))
    runs["train"] = require_ok(run_cli("train", [
        E2E_ID, 0, "--epochs", 1, "--iters-per-epoch", 2, "--val-iters", 1, "--device", "cpu",
        "--num-workers", 0, "--no-final-validation", "--no-progress"], env))
    pred = root / "pred out é"
    runs["predict"] = require_ok(run_cli("predict", [
        "-i", folder / "imagesTs", "-o", pred, "-t", E2E_ID, "-f", 0, "--device", "cpu", "--disable-tta"], env))
    return TrainedTask(root=root, task_folder=folder, env=env, runs=runs, prediction_dir=pred)
