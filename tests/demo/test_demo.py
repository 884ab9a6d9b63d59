"""The README's main job, end to end on a shortened schedule: every stage runs through its
public entry point and the demo ends with a Dice table and its pictures."""

from __future__ import annotations

import json
import os

import pytest

from c2fnas_auto.cli import demo


@pytest.mark.slow
def test_demo_runs_end_to_end_and_prints_a_dice_table(tmp_path, capsys):
    saved = {k: os.environ.get(k) for k in ("C2FNAS_raw", "C2FNAS_preprocessed", "C2FNAS_results")}
    try:
        # the shortest schedule that still runs every stage: the demo's own quick options (a search
        # of 2 iterations per epoch, prediction without mirroring) as well as its training ones
        rc = demo.main(["--workdir", str(tmp_path / "demo"), "--epochs", "1", "--iters-per-epoch", "3",
                        "--search-iters-per-epoch", "2", "--disable-tta"])
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    out = capsys.readouterr().out
    assert rc == 0
    assert "mean Dice" in out
    work = tmp_path / "demo"
    summary = json.loads((work / "test_summary.json").read_text())
    assert len(summary["per_case"]) == 4  # the four held-back test cases
    assert (work / "prediction_slice.png").is_file()
    task = next((work / "raw").glob("Task*_SyntheticDemo"))
    plans = json.loads((work / "preprocessed" / task.name / "plans.json").read_text())
    assert plans["genotype"]["provenance"].get("source_task") == task.name  # the search wrote its winner
    assert plans["genotype"]["provenance"]["settings"]["iters_per_epoch"] == 2  # --search-iters-per-epoch
    assert plans["network"]["cell_style"] == "c2fnas"  # the default wiring (it learns the lesion in the demo's budget)
    from c2fnas_auto.nas.genotype import Genotype
    from c2fnas_auto.paths import experiment_name

    experiment = experiment_name(plans["plans_name"], Genotype.from_dict(plans["genotype"]).short_id())
    assert (work / "results" / task.name / experiment / "fold_0" / "progress.png").is_file()


@pytest.mark.parametrize("flag", ["--epochs", "--iters-per-epoch", "--search-iters-per-epoch"])
def test_a_count_below_one_is_one_line_before_any_step(tmp_path, capsys, flag):
    with pytest.raises(SystemExit) as exc:
        demo.main([flag, "0", "--workdir", str(tmp_path / "demo")])
    assert exc.value.code == 2 and f"{flag} must be at least 1 (got 0)" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()
