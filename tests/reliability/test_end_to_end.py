"""Paths with a space and non-ASCII characters work through every CLI.

The `trained_task` fixture runs make -> plan -> train -> predict as subprocesses under
'<tmp>/my data/données' (and predicts into 'pred out é'); these tests check what it
produced, evaluate it, and run a tiny search in such a path too.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from c2fnas_auto.utils.testing import cli_env, run_cli

from .helpers import E2E_ID, require_ok


@pytest.mark.slow
def test_pipeline_in_path_with_space_and_non_ascii(trained_task):
    from c2fnas_auto.data.image_io import Geometry

    assert " " in str(trained_task.root) and "é" in str(trained_task.root)
    fold0 = next((trained_task.root / "results").rglob("fold_0"))
    assert (fold0 / "checkpoint_final.pth").is_file()
    inputs = sorted((trained_task.task_folder / "imagesTs").glob("*.nii.gz"))
    preds = sorted(trained_task.prediction_dir.glob("*.nii.gz"))
    assert [p.name for p in preds] == [p.name for p in inputs]
    for img_file, pred_file in zip(inputs, preds):
        img, pred = sitk.ReadImage(str(img_file)), sitk.ReadImage(str(pred_file))
        assert pred.GetSize() == img.GetSize()
        assert Geometry.from_sitk(pred).matches(Geometry.from_sitk(img), 1e-6) is None, pred_file.name
        assert set(np.unique(sitk.GetArrayFromImage(pred)).tolist()) <= {0, 1, 2}

    summary = trained_task.root / "summary é.json"
    require_ok(run_cli("evaluate", ["-ref", trained_task.task_folder / "labelsTs", "-pred",
                                    trained_task.prediction_dir, "-t", E2E_ID, "-o", summary], trained_task.env))
    result = json.loads(summary.read_text(encoding="utf-8"))
    assert len(result["per_case"]) == len(inputs)


@pytest.mark.slow
def test_search_in_path_with_space_and_non_ascii(trained_task, tmp_path):
    """A minimal search on a copy of the planned task writes its genotype into that copy's plans."""
    root = tmp_path / "sp ace" / "ünï"
    for sub in ("raw", "preprocessed"):
        shutil.copytree(trained_task.root / sub, root / sub)
    env = cli_env(root)
    plans = next((root / "preprocessed").iterdir()) / "plans.json"
    before = json.loads(plans.read_text())
    require_ok(run_cli("search", ["-t", E2E_ID, "--coarse-candidates", 2, "--min-epochs", 1, "--clusters", 2,
                                  "--population", 2, "--fine-epochs", 1, "--generations", 1, "--iters-per-epoch", 1,
                                  "--tournament", 1, "--rungs", 1, "--standalone-sample", 0, "--device", "cpu",
                                  "--no-progress"],
                       env))
    after = json.loads(plans.read_text())
    assert after["genotype"]["provenance"].get("source") == "c2fnas_search", after["genotype"]
    assert before["genotype"]["provenance"] != after["genotype"]["provenance"]
    assert (root / "results" / plans.parent.name / "search" / "state.json").is_file()
    assert (root / "results" / plans.parent.name / "search" / "genotype.json").is_file()
