"""SIGKILL in the middle of preprocessing and prediction, then the same command again.

The run must complete, finished work must not be redone (mtime unchanged), and a
half-written file left by an "old run" (a truncated array, properties JSON or NIfTI
under its final name, a stale temporary) must be detected and rewritten, never read.
Training and search have their own kill-and-continue tests (tests/training,
tests/search); see documentation/reference/reliability.md.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from c2fnas_auto.utils.io import TMP_MARKER
from c2fnas_auto.utils.testing import (cli_env, diff_snapshots, finish, kill_when, run_cli, snapshot, stale_temporaries,
                                       start_cli, truncate_file)

from .helpers import E2E_ID, require_ok

INTERRUPT_ID = 95
NUM_CASES = 8


def _finished_outputs(folder: Path, pattern: str) -> list[Path]:
    return sorted(p for p in folder.glob(pattern) if TMP_MARKER not in p.name) if folder.is_dir() else []


@pytest.mark.slow
def test_killed_preprocessing_resumes_and_repairs_leftovers(tmp_path):
    from c2fnas_auto.data.dataset import load_dataset
    from c2fnas_auto.data.synthetic import make_synthetic_task
    from c2fnas_auto.preprocessing.storage import case_paths, list_cases, load_case

    root = tmp_path / "root"
    raw = make_synthetic_task(root / "raw", task_id=INTERRUPT_ID, name="Killed", num_train=NUM_CASES, num_test=0,
                              shape=(20, 48, 48), spacing=(3.0, 1.0, 1.0), seed=5, progress=False)
    raw_before = snapshot(raw)
    env = cli_env(root)
    data = root / "preprocessed" / raw.name / "data"
    args = ["-t", INTERRUPT_ID, "-np", 1, "--gpu-memory-gb", 0.25, "--base-channels", 4, "--no-progress"]

    proc = start_cli("plan_and_preprocess", args, env, tmp_path / "logs")
    not_cases = ("preprocessing_settings.json", "dataset_cases.json")
    kill_when(proc, lambda: len([p for p in _finished_outputs(data, "*.json") if p.name not in not_cases]) >= 2)
    done = [p.name[:-len(".json")] for p in _finished_outputs(data, "*.json") if p.name not in not_cases]
    done = [c for c in done if c in list_cases(data.parent)]
    ids = sorted(c.case_id for c in load_dataset(raw).training)
    assert 2 <= len(done) < NUM_CASES, f"kill point missed: finished {done}"
    todo = [c for c in ids if c not in done]

    # Leftovers of an "old run" with a non-atomic writer:
    truncated_json_case, kept = done[0], done[1:]
    truncate_file(case_paths(data, truncated_json_case)[2], 0.5)          # half a properties file
    half_npy = case_paths(data, todo[0])[0]
    shutil.copyfile(case_paths(data, kept[0])[0], half_npy)
    truncate_file(half_npy, 0.5)                                            # half an array, no properties
    stale = data / f"{todo[-1]}{TMP_MARKER}oldrun.npy"
    stale.write_bytes(b"\x93NUMPY garbage")                                  # a temporary never renamed
    for name in ("plans.json", "fingerprint.json"):
        truncate_file(data.parent / name, 0.5)                              # half-written task files
    kept_state = {p: p.stat().st_mtime_ns for c in kept for p in case_paths(data, c)}

    # a half-written plans.json may have held a searched genotype: planning stops with one line
    # saying how to keep it (--genotype FILE) or start over, and leaves the file alone
    res = run_cli("plan_and_preprocess", args, env)
    assert res.returncode == 2 and "--genotype FILE" in res.stderr, res.describe()
    (data.parent / "plans.json").unlink()  # the user chooses to plan afresh (reference genotype)
    require_ok(run_cli("plan_and_preprocess", args, env))

    assert list_cases(data.parent) == ids
    for c in ids:
        arr, seg, props = load_case(data.parent, c, mmap=False)
        assert np.isfinite(arr).all() and seg is not None
        assert list(arr.shape[1:]) == list(seg.shape[1:]) == list(props["shape_after_resampling"]), c
    json.loads(case_paths(data, truncated_json_case)[2].read_text())  # rewritten, parses
    assert {p: p.stat().st_mtime_ns for p in kept_state} == kept_state, "finished cases were redone"
    assert not stale_temporaries(root / "preprocessed"), stale_temporaries(root / "preprocessed")
    for name in ("plans.json", "fingerprint.json"):
        json.loads((data.parent / name).read_text())
    assert not diff_snapshots(raw_before, snapshot(raw)), "raw input modified"


@pytest.mark.slow
def test_killed_prediction_continues_and_rewrites_truncated_output(trained_task, tmp_path):
    from c2fnas_auto.data.image_io import check_complete

    inp = tmp_path / "in put"
    shutil.copytree(trained_task.task_folder / "imagesTs", inp)
    inputs = sorted(p.name for p in inp.glob("*.nii.gz"))
    assert len(inputs) >= 3
    in_before = snapshot(inp)
    out = tmp_path / "out"
    # mirroring TTA on: each case takes long enough for the kill to land between cases
    args = ["-i", inp, "-o", out, "-t", E2E_ID, "-f", 0, "--device", "cpu"]

    proc = start_cli("predict", args, trained_task.env, tmp_path / "logs")
    kill_when(proc, lambda: len(_finished_outputs(out, "*.nii.gz")) >= 1)
    done = [p.name for p in _finished_outputs(out, "*.nii.gz")]
    assert 1 <= len(done) < len(inputs), f"kill point missed: {done}"
    todo = [n for n in inputs if n not in done]
    done_state = {out / n: (out / n).stat().st_mtime_ns for n in done}

    half = out / todo[0]
    shutil.copyfile(out / done[0], half)
    truncate_file(half, 0.5)                                  # a half-written prediction of an old run
    (out / f"{todo[-1].split('.')[0]}{TMP_MARKER}oldrun.nii.gz").write_bytes(b"junk")

    require_ok(run_cli("predict", [*args, "--continue"], trained_task.env))

    assert sorted(p.name for p in _finished_outputs(out, "*.nii.gz")) == inputs
    assert {p: p.stat().st_mtime_ns for p in done_state} == done_state, "finished predictions were redone"
    for name in inputs:
        check_complete(out / name)  # raises on a truncated file
        pred, img = sitk.ReadImage(str(out / name)), sitk.ReadImage(str(inp / name))
        assert pred.GetSize() == img.GetSize() and np.allclose(pred.GetSpacing(), img.GetSpacing())
        assert set(np.unique(sitk.GetArrayFromImage(pred)).tolist()) <= {0, 1, 2}
    assert not diff_snapshots(in_before, snapshot(inp)), "input folder modified"


def test_finish_helper_reports_output(tmp_path):
    """The kill helper must not pass silently when the command dies before the kill point."""
    proc = start_cli("genotype", [tmp_path / "missing.json"], cli_env(tmp_path), tmp_path / "logs")
    with pytest.raises(AssertionError, match="ended before the kill point"):
        kill_when(proc, lambda: False, timeout=120)
    res = finish(proc)
    assert res.returncode == 2 and "missing.json" in res.stderr


def _plant_truncated_checkpoint(task) -> tuple[Path, list]:
    import torch

    from c2fnas_auto.inference.experiments import experiment_dir

    experiment = experiment_dir(task.task_name, task.plans.plans_name, task.plans.genotype)
    path = experiment / "fold_0" / "checkpoint_latest.pth"
    path.parent.mkdir(parents=True)
    torch.save({"network_weights": {"w": torch.zeros(64, 64)}, "epoch": 3}, path)
    truncate_file(path, 0.5)
    return path, ["train", [task.task_name, 0, "--continue", "--epochs", 1, "--iters-per-epoch", 1,
                            "--device", "cpu", "--num-workers", 0, "--no-progress"]]


def _plant_truncated_search_state(task) -> tuple[Path, list]:
    path = task.results_root / task.task_name / "search" / "state.json"  # paths.search_results_dir
    path.parent.mkdir(parents=True)
    path.write_text('{"task_name": "' + task.task_name + '", "settings": {"coarse_candidates": 2, "coa')
    return path, ["search", ["-t", task.task_name, "--continue", "--coarse-candidates", 1, "--min-epochs", 1,
                             "--fine-epochs", 0, "--generations", 1, "--iters-per-epoch", 1, "--device", "cpu",
                             "--no-progress"]]


@pytest.mark.parametrize("plant", [_plant_truncated_checkpoint, _plant_truncated_search_state],
                         ids=["train_checkpoint", "search_state"])
def test_truncated_resume_file_is_detected_not_read(copy_task, plant):
    """--continue meeting a half-written checkpoint/state of an old run stops with one line naming it."""
    from c2fnas_auto.utils.testing import call_cli

    from .helpers import assert_user_error

    path, (name, args) = plant(copy_task)
    digest = path.read_bytes()
    res = call_cli(name, args, cli_env(copy_task.root))
    assert_user_error(res, [path.name], r"cannot read|not valid JSON|truncat|corrupt")
    assert path.read_bytes() == digest
