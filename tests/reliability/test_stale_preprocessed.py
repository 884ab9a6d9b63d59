"""Preprocessed arrays that no longer belong to the plans: a changed label followed by
`--no-preprocess`, a hand-edited target spacing, arrays without a settings record. The
trainer and the search refuse them with one line naming the setting (or case) and the
command that redoes the arrays; `--no-preprocess` refuses to write plans that disagree."""

from __future__ import annotations

import json
import pathlib
import time

import numpy as np
import SimpleITK as sitk

from c2fnas_auto.utils.testing import call_cli, cli_env, diff_snapshots, snapshot

from .helpers import assert_user_error

TRAIN_QUICK = ["--epochs", 1, "--iters-per-epoch", 1, "--val-iters", 1, "--device", "cpu", "--num-workers", 0,
               "--no-final-validation", "--no-progress", "--batch-size", 2, "--patch-size", 8, 16, 16]
PLAN = ["-t", 98, "--gpu-memory-gb", 0.25, "--base-channels", 4, "--no-progress"]
SEARCH_QUICK = ["-t", 98, "--coarse-candidates", 2, "--min-epochs", 1, "--clusters", 2, "--population", 2,
                "--fine-epochs", 1, "--generations", 1, "--iters-per-epoch", 1, "--tournament", 1, "--rungs", 1,
                "--standalone-sample", 0, "--device", "cpu", "--no-progress"]


def _empty_first_label(task) -> str:
    """Overwrite the first training case's label with an empty one; returns the case id."""
    meta = json.loads((task.raw_dir / "dataset.json").read_text())
    entry = meta["training"][0]
    label = task.raw_dir / entry["label"]
    old = sitk.ReadImage(str(label))
    empty = sitk.GetImageFromArray(np.zeros_like(sitk.GetArrayFromImage(old)))
    empty.CopyInformation(old)
    sitk.WriteImage(empty, str(label))
    return pathlib.Path(entry["image"]).name.split(".")[0]


def test_changed_label_then_no_preprocess_is_refused_and_train_refuses_the_old_arrays(copy_task):
    env = cli_env(copy_task.root)
    case_id = _empty_first_label(copy_task)
    before = snapshot(copy_task.preprocessed_dir)
    t0 = time.monotonic()
    res = call_cli("plan_and_preprocess", [*PLAN, "--no-preprocess"], env)
    assert_user_error(res, ["--no-preprocess", "c2fnas_plan_and_preprocess -t Task98_Synthetic"],
                      r"would no longer match plans.json")
    assert diff_snapshots(before, snapshot(copy_task.preprocessed_dir)) == []  # nothing written

    res = call_cli("train", ["98", 0, *TRAIN_QUICK], env)  # the user trains anyway
    line = assert_user_error(res, [f"{case_id}.json", "c2fnas_plan_and_preprocess -t Task98_Synthetic"],
                             r"other source files than there are now .*labelsTr")
    assert case_id in line
    assert time.monotonic() - t0 < 120
    assert not any(copy_task.results_root.rglob("checkpoint_*.pth"))

    res = call_cli("plan_and_preprocess", PLAN, env)  # the command the line names
    assert res.returncode == 0, res.describe()
    res = call_cli("train", ["98", 0, *TRAIN_QUICK], env)
    assert res.returncode == 0, res.describe()


def _edit_plans(task, **changes) -> None:
    path = task.preprocessed_dir / "plans.json"
    plans = json.loads(path.read_text())
    plans.update(changes)
    path.write_text(json.dumps(plans))


def test_hand_edited_target_spacing_is_refused_by_train_and_search(copy_task):
    env = cli_env(copy_task.root)
    plans = json.loads((copy_task.preprocessed_dir / "plans.json").read_text())
    _edit_plans(copy_task, target_spacing=[s * 2 for s in plans["target_spacing"]])
    res = call_cli("train", ["98", 0, *TRAIN_QUICK], env)
    assert_user_error(res, ["preprocessing_settings.json", "target_spacing", "c2fnas_plan_and_preprocess -t"],
                      r"made with other settings")
    res = call_cli("search", SEARCH_QUICK, env)
    assert_user_error(res, ["target_spacing", "c2fnas_plan_and_preprocess -t"], r"made with other settings")
    assert not (copy_task.results_root / copy_task.task_name / "search").exists()


def test_changed_normalization_is_refused_by_a_resumed_search(copy_task):
    env = cli_env(copy_task.root)
    plans = json.loads((copy_task.preprocessed_dir / "plans.json").read_text())
    norm = [{**n, "scheme": "zscore" if n.get("scheme") != "zscore" else "ct"} for n in plans["normalization"]]
    _edit_plans(copy_task, normalization=norm)
    res = call_cli("search", [*SEARCH_QUICK, "--continue"], env)
    assert_user_error(res, ["normalization"], r"made with other settings")


def test_arrays_without_a_settings_record_are_refused(copy_task):
    (copy_task.preprocessed_dir / "data" / "preprocessing_settings.json").unlink()
    res = call_cli("train", ["98", 0, *TRAIN_QUICK], cli_env(copy_task.root))
    assert_user_error(res, ["preprocessing_settings.json"], r"records no settings")


def test_a_case_marker_from_other_settings_is_refused(copy_task):
    from c2fnas_auto.preprocessing.storage import list_dataset_cases

    case_id = list_dataset_cases(copy_task.preprocessed_dir)[0]
    marker = copy_task.preprocessed_dir / "data" / f"{case_id}.json"
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "settings_identity": "0" * 16}))
    res = call_cli("train", ["98", 0, *TRAIN_QUICK], cli_env(copy_task.root))
    assert_user_error(res, [f"{case_id}.json"], r"preprocessed under other plans settings")


def test_without_a_raw_folder_the_fingerprint_decides(copy_task, monkeypatch):
    """A machine holding only preprocessed data: the sources the plans were made from count."""
    from c2fnas_auto.errors import InputError
    from c2fnas_auto.planning.plans import Plans
    from c2fnas_auto.preprocessing.provenance import check_arrays_match_plans
    from c2fnas_auto.preprocessing.storage import list_dataset_cases

    import pytest

    monkeypatch.setenv("C2FNAS_raw", str(copy_task.root / "no raw here"))
    plans = Plans.load(copy_task.preprocessed_dir / "plans.json")
    ids = list_dataset_cases(copy_task.preprocessed_dir)
    check_arrays_match_plans(copy_task.preprocessed_dir, plans, copy_task.task_name, ids)
    fp_path = copy_task.preprocessed_dir / "fingerprint.json"
    fp = json.loads(fp_path.read_text())
    first = fp["cases"][0]
    key = next(iter(first["sources"]))
    first["sources"][key] = [1, 1]
    fp_path.write_text(json.dumps(fp))
    with pytest.raises(InputError, match=rf"case {first['case_id']} was preprocessed from other source files"):
        check_arrays_match_plans(copy_task.preprocessed_dir, plans, copy_task.task_name, ids)
