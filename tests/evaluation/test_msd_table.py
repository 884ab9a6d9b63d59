"""MSD table: pooling of fold summaries, missing folds, markdown and JSON output."""

from __future__ import annotations

import json
import math

import pytest

from c2fnas_auto.evaluation.msd_table import collect_results, render_markdown
from c2fnas_auto.utils.io import atomic_write_json


def _summary(cases):
    return {"per_case": [{"case_id": f"c{i}", "metrics": {
        "1": {"name": "liver", "Dice": d1, "NSD": d1},
        "2": {"name": "tumour", "Dice": d2, "NSD": float("nan") if math.isnan(d2) else d2 / 2}}}
        for i, (d1, d2) in enumerate(cases)]}


def test_collect_and_render(tmp_path, capsys):
    root = tmp_path / "results"
    plans = root / "Task03_Liver" / "C2FNASPlans__0123abcd"
    atomic_write_json(plans / "fold_0" / "validation" / "summary.json", _summary([(0.9, 0.5), (0.8, float("nan"))]))
    atomic_write_json(plans / "fold_2" / "validation" / "summary.json", _summary([(1.0, 0.7)]))
    (plans / "fold_1").mkdir()  # started, not validated yet
    atomic_write_json(root / "Task09_Spleen" / "C2FNASPlans__0123abcd" / "fold_0" / "validation" / "summary.json",
                      {"per_case": [{"metrics": {"1": {"name": "spleen", "Dice": 0.95, "NSD": 0.97}}}]})
    atomic_write_json(root / "Task03_Liver" / "search" / "report.json", {})  # no folds: not an experiment
    results = collect_results(root)
    liver, spleen = results
    assert liver.experiment == "C2FNASPlans__0123abcd"
    assert liver.trained_folds == [0, 2] and liver.missing_folds == [1, 3, 4]
    c1, c2 = liver.classes
    assert c1.dice == pytest.approx(0.9) and c1.n_cases == 3
    assert c2.dice == pytest.approx(0.6) and c2.n_cases == 2  # NaN case excluded
    assert liver.mean_dice == pytest.approx(0.75)
    md = render_markdown(results)
    assert ("| Task03_Liver | C2FNASPlans__0123abcd | 2/5 (missing 1,3,4) | liver: 90.00 / 90.00 | "
            "tumour: 60.00 / 30.00 |") in md
    assert "spleen: 95.00 / 97.00 |  | 95.00 / 97.00" in md

    from c2fnas_auto.cli.msd_table import main

    assert main(["--results", str(root), "-o", str(tmp_path / "table")]) == 0
    data = json.loads((tmp_path / "table.json").read_text())
    assert [t["task"] for t in data["tasks"]] == ["Task03_Liver", "Task09_Spleen"]
    assert (tmp_path / "table.md").read_text() == md
    assert main(["--results", str(tmp_path / "nothing")]) == 2
