from pathlib import Path

import pytest

from c2fnas_auto import paths
from c2fnas_auto.errors import PathsError, TaskNotFoundError


def _mk(root: Path, *names: str) -> Path:
    for n in names:
        (root / n).mkdir(parents=True)
    return root


@pytest.mark.parametrize("var,fn", [("C2FNAS_raw", paths.raw_root),
                                    ("C2FNAS_preprocessed", paths.preprocessed_root),
                                    ("C2FNAS_results", paths.results_root)])
def test_missing_env_var_names_variable_and_export(monkeypatch, var, fn):
    monkeypatch.delenv(var, raising=False)
    with pytest.raises(PathsError) as e:
        fn()
    assert var in str(e.value) and f"export {var}=" in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("task", [7, "7", "007", "07", "Task07", "Task07_Pancreas"])
def test_resolve_msd_forms(tmp_path, task):
    root = _mk(tmp_path, "Task07_Pancreas", "Task03_Liver", "not_a_task")
    assert paths.resolve_task(task, root) == root / "Task07_Pancreas"


@pytest.mark.parametrize("task", [7, "007", "Dataset007", "Dataset007_X"])
def test_resolve_nnunet_forms(tmp_path, task):
    root = _mk(tmp_path, "Dataset007_X", "Dataset070_Y")
    assert paths.resolve_task(task, root) == root / "Dataset007_X"


def test_resolve_three_digit_msd_name(tmp_path):
    root = _mk(tmp_path, "Task098_Synthetic")
    assert paths.resolve_task(98, root).name == "Task098_Synthetic"


def test_resolve_none_lists_found(tmp_path):
    root = _mk(tmp_path, "Task03_Liver", "Dataset004_Hippocampus")
    with pytest.raises(TaskNotFoundError) as e:
        paths.resolve_task(7, root)
    msg = str(e.value)
    assert "Task07_*" in msg and "Task03_Liver" in msg and "Dataset004_Hippocampus" in msg


def test_resolve_several_lists_matches(tmp_path):
    root = _mk(tmp_path, "Task07_Pancreas", "Dataset007_Pancreas")
    with pytest.raises(TaskNotFoundError) as e:
        paths.resolve_task("7", root)
    assert "Task07_Pancreas" in str(e.value) and "Dataset007_Pancreas" in str(e.value)
    assert paths.resolve_task("Dataset007_Pancreas", root).name == "Dataset007_Pancreas"


def test_resolve_unknown_full_name(tmp_path):
    root = _mk(tmp_path, "Task07_Pancreas")
    with pytest.raises(TaskNotFoundError, match="Task09_Spleen.*found: Task07_Pancreas"):
        paths.resolve_task("Task09_Spleen", root)


def test_resolve_missing_root(tmp_path):
    with pytest.raises(TaskNotFoundError, match="does not exist"):
        paths.resolve_task(7, tmp_path / "nope")


def test_roots_from_env(monkeypatch, tmp_path):
    raw = _mk(tmp_path / "räw dir", "Task05_Prostate")
    monkeypatch.setenv("C2FNAS_raw", str(raw))
    monkeypatch.setenv("C2FNAS_preprocessed", str(tmp_path / "pre"))
    monkeypatch.setenv("C2FNAS_results", str(tmp_path / "res"))
    assert paths.task_name_from_id(5) == "Task05_Prostate"
    assert paths.preprocessed_dir("Task05_Prostate") == tmp_path / "pre" / "Task05_Prostate"
    assert paths.results_dir("Task05_Prostate") == tmp_path / "res" / "Task05_Prostate" / "C2FNASPlans"
    assert paths.fold_dir("Task05_Prostate", "all", "P").name == "fold_all"
    assert paths.fold_dir("Task05_Prostate", 0) == paths.results_dir("Task05_Prostate") / "fold_0"
