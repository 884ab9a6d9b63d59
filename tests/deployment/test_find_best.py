"""Choosing among trained experiments, ensembles from saved validation probabilities, and
prediction split over jobs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from c2fnas_auto.cli.find_best_configuration import main as find_best_main
from c2fnas_auto.cli.predict import main as predict_main
from c2fnas_auto.deployment.selection import BEST_FILE, fold_summaries, pooled_summary
from c2fnas_auto.evaluation.metrics import dice


def _labels(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_find_best_compares_experiments_and_their_ensemble(trained, capsys):
    assert find_best_main(["-t", "98", "--no-progress"]) == 0
    out = capsys.readouterr().out
    decision = json.loads((trained.experiment_dir.parent / BEST_FILE).read_text())
    names = {c["name"] for c in decision["candidates"]}
    a, b = trained.experiment_dir.name, trained.other_dir.name
    ens_name = "--".join(sorted([a, b]))  # experiments in folder-name order
    assert names == {a, b, ens_name} and decision["ensembles_skipped"] == []
    dices = [c["dice"] for c in decision["candidates"]]
    assert dices == sorted(dices, reverse=True) and decision["best"] == decision["candidates"][0]
    assert decision["predict_command"] in out and "--experiment" in decision["predict_command"]

    # each experiment's score is its pooled CV Dice from the folds' summaries
    labels = trained.plans.labels
    for d in (trained.experiment_dir, trained.other_dir):
        pooled = pooled_summary(list(fold_summaries(d).values()), labels)
        cand = next(c for c in decision["candidates"] if c["name"] == d.name)
        assert cand["dice"] == pytest.approx(pooled["foreground_mean"]["Dice"]) and cand["n_cases"] == 8

    # the ensemble: recompute one case by hand from the two saved softmax files
    ens = next(c for c in decision["candidates"] if c["name"] == ens_name)
    case = json.loads((trained.experiment_dir / "fold_0" / "validation" / "summary.json").read_text())["per_case"][0]
    cid = case["case_id"]
    probs = sum(np.load(d / "fold_0" / "validation" / f"{cid}.npz")["probabilities"]
                for d in (trained.experiment_dir, trained.other_dir)) / 2
    ref = _labels(case["reference_file"])
    ens_summary = json.loads(open(ens["summary_file"]).read())
    got = next(c for c in ens_summary["per_case"] if c["case_id"] == cid)["metrics"]["1"]["Dice"]
    want = dice(np.argmax(probs, 0), ref, 1)
    assert got == pytest.approx(want, nan_ok=True)
    assert ens["n_cases"] == 8


def test_find_best_without_saved_probabilities_ranks_the_experiments_and_says_why(trained, tmp_path, capsys):
    import os

    results = tmp_path / "results"
    shutil.copytree(trained.experiment_dir.parent, results / trained.task_name)
    for npz in (results / trained.task_name / trained.other_dir.name).rglob("*.npz"):
        npz.unlink()
    os.environ["C2FNAS_results"] = str(results)
    assert find_best_main(["-t", "98", "--no-progress"]) == 0
    decision = json.loads((results / trained.task_name / BEST_FILE).read_text())
    assert len(decision["candidates"]) == 2
    assert len(decision["ensembles_skipped"]) == 1 and "--save-probabilities" in decision["ensembles_skipped"][0]
    # a results-only machine (no raw task): experiments are still ranked, ensembles cannot be scored
    os.environ["C2FNAS_raw"] = str(tmp_path / "no_raw")
    (tmp_path / "no_raw").mkdir()
    assert find_best_main(["-t", trained.task_name, "--no-progress"]) == 0
    decision = json.loads((results / trained.task_name / BEST_FILE).read_text())
    assert len(decision["candidates"]) == 2 and "no reference labels" in decision["ensembles_skipped"][0]
    assert find_best_main(["-t", "98", "--experiments", "nope"]) == 2
    assert "no validated experiment named nope" in capsys.readouterr().err
    assert find_best_main(["-t", "98", "--max-ensemble", "0"]) == 2


def test_ensemble_of_experiments_and_prediction_in_parts(trained, tmp_path):
    inp = trained.raw_dir / "imagesTs"
    a, b = trained.experiment_dir.name, trained.other_dir.name
    common = ["-t", "98", "--disable-tta", "--save-probabilities"]
    assert predict_main(["-i", str(inp), "-o", str(tmp_path / "a"), *common, "--experiment", a]) == 0
    assert predict_main(["-i", str(inp), "-o", str(tmp_path / "b"), *common, "--experiment", b]) == 0
    cases = sorted(f.name for f in inp.glob("*.nii.gz"))
    assert len(cases) == 2
    # two jobs, one case each, into one folder: together they equal one ensemble run
    for part in (0, 1):
        assert predict_main(["-i", str(inp), "-o", str(tmp_path / "ab"), *common, "--experiment", a, b,
                             "--num-parts", "2", "--part-id", str(part)]) == 0
        done = sorted(f.name for f in (tmp_path / "ab").glob("*.nii.gz"))
        assert done == cases[:part + 1]
    for name in cases:
        stem = name[:-len(".nii.gz")]
        pa = np.load(tmp_path / "a" / f"{stem}.npz")["probabilities"]
        pb = np.load(tmp_path / "b" / f"{stem}.npz")["probabilities"]
        pab = np.load(tmp_path / "ab" / f"{stem}.npz")["probabilities"]
        assert np.allclose(pab, (pa + pb) / 2, atol=1e-5)
        assert np.array_equal(_labels(tmp_path / "ab" / name), np.argmax(pab, 0))
    assert predict_main(["-i", str(inp), "-o", str(tmp_path / "x"), "-t", "98", "--num-parts", "2",
                         "--part-id", "2"]) == 2
