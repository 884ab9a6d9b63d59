"""Shared fixtures: one tiny synthetic task, planned and preprocessed once per session.

Tests that change files in it must copy it first (see `copy_task`)."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "totalsegmentator"


@dataclass
class TinyTask:
    root: Path
    raw_dir: Path
    task_name: str
    preprocessed_dir: Path
    results_root: Path
    plans: object


def _set_roots(root: Path) -> None:
    os.environ["C2FNAS_raw"] = str(root / "raw")
    os.environ["C2FNAS_preprocessed"] = str(root / "preprocessed")
    os.environ["C2FNAS_results"] = str(root / "results")


@pytest.fixture(scope="session")
def tiny_task(tmp_path_factory) -> TinyTask:
    """Task098: 8 training + 2 test cases of 24x40x40 voxels, anisotropic, planned narrow."""
    from c2fnas_auto.data.synthetic import make_synthetic_task
    from c2fnas_auto.planning.pipeline import plan_and_preprocess

    root = tmp_path_factory.mktemp("tiny_task")
    _set_roots(root)
    raw_dir = make_synthetic_task(root / "raw", task_id=98, name="Synthetic", num_train=8, num_test=2,
                                  shape=(24, 40, 40), spacing=(3.0, 1.0, 1.0), seed=0)
    plans = plan_and_preprocess(98, gpu_memory_gb=0.25, base_channels=4, num_workers=1)
    return TinyTask(root=root, raw_dir=raw_dir, task_name=raw_dir.name,
                    preprocessed_dir=root / "preprocessed" / raw_dir.name,
                    results_root=root / "results", plans=plans)


@pytest.fixture
def copy_task(tiny_task, tmp_path) -> TinyTask:
    """A private copy of the tiny task (raw, preprocessed, empty results) with env vars set."""
    root = tmp_path / "task"
    for sub in ("raw", "preprocessed"):
        shutil.copytree(tiny_task.root / sub, root / sub)
    (root / "results").mkdir(parents=True)
    _set_roots(root)
    yield TinyTask(root=root, raw_dir=root / "raw" / tiny_task.task_name, task_name=tiny_task.task_name,
                   preprocessed_dir=root / "preprocessed" / tiny_task.task_name,
                   results_root=root / "results", plans=tiny_task.plans)
    _set_roots(tiny_task.root)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _library_log_handlers_follow_stderr():
    """Libraries keep the sys.stderr they saw first in their log handlers (Optuna's default
    handler; a MONAI bundle's logging config installs one on the root logger): under pytest that
    is an earlier test's capture, closed by now, and a later warning then prints a 'Logging
    error' traceback into the stderr a test inspects. Point such handlers at this test's stderr."""
    import logging
    import sys

    loggers = [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values()
                                       if isinstance(lg, logging.Logger)]
    for logger in loggers:
        for handler in logger.handlers:
            if type(handler) is logging.StreamHandler and getattr(handler.stream, "closed", False):
                handler.stream = sys.stderr  # not setStream: it flushes the closed stream first
    yield
