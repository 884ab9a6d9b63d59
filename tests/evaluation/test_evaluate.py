"""Folder evaluation: summary figures, empty-label rules, geometry checks, CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from c2fnas_auto.data.image_io import Geometry, write_segmentation
from c2fnas_auto.errors import InputError
from c2fnas_auto.evaluation.evaluate import evaluate_folders

GEO = Geometry(spacing=(1.0, 1.0, 2.0), origin=(10.0, -5.0, 3.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
LABELS = {"background": 0, "organ": 1, "tumour": 2}


def _write_pair(tmp_path, name, ref, pred, pred_geo=GEO):
    (tmp_path / "ref").mkdir(exist_ok=True)
    (tmp_path / "pred").mkdir(exist_ok=True)
    write_segmentation(ref, GEO, tmp_path / "ref" / f"{name}.nii.gz")
    write_segmentation(pred, pred_geo, tmp_path / "pred" / f"{name}.nii.gz")


def _cases(tmp_path):
    ref = np.zeros((12, 16, 16), dtype=np.uint8)
    ref[2:8, 4:12, 4:12] = 1
    pred = ref.copy()
    pred[2:8, 4:12, 4:6] = 0  # misses a quarter of the organ
    _write_pair(tmp_path, "a", ref, pred)
    ref_b = ref.copy()
    ref_b[3:5, 6:8, 6:8] = 2
    _write_pair(tmp_path, "b", ref_b, ref_b)


def test_summary_figures(tmp_path):
    _cases(tmp_path)
    out = tmp_path / "summary.json"
    s = evaluate_folders(tmp_path / "ref", tmp_path / "pred", LABELS, out, nsd_tolerance_mm=1.0, progress=False)
    assert json.loads(out.read_text())["mean"]["1"]["Dice"] == pytest.approx(s["mean"]["1"]["Dice"])
    by_case = {c["case_id"]: c["metrics"] for c in s["per_case"]}
    a1 = by_case["a"]["1"]
    assert a1["Dice"] == pytest.approx(2 * 288 / (288 + 384))
    assert (a1["tp"], a1["fp"], a1["fn"]) == (288, 0, 96)
    assert a1["fn_mm3"] == pytest.approx(96 * 2.0)
    assert 0 < a1["NSD"] < 1
    # label 2 is absent from case a (both empty): NaN, excluded from the mean
    assert math.isnan(by_case["a"]["2"]["Dice"]) and by_case["a"]["2"]["n_ref"] == 0
    assert s["mean"]["2"]["Dice"] == pytest.approx(1.0) and s["mean"]["2"]["n_cases"] == 1
    assert s["mean"]["1"]["Dice"] == pytest.approx((a1["Dice"] + 1.0) / 2)
    assert s["foreground_mean"]["Dice"] == pytest.approx((s["mean"]["1"]["Dice"] + 1.0) / 2)


def test_geometry_mismatch_names_case(tmp_path):
    ref = np.zeros((4, 5, 6), dtype=np.uint8)
    moved = Geometry(GEO.spacing, (11.0, -5.0, 3.0), GEO.direction)
    _write_pair(tmp_path, "case_7", ref, ref, pred_geo=moved)
    with pytest.raises(InputError, match="case_7.*origin"):
        evaluate_folders(tmp_path / "ref", tmp_path / "pred", LABELS, None, progress=False)


def test_missing_reference_and_empty_folder(tmp_path):
    _cases(tmp_path)
    (tmp_path / "ref" / "b.nii.gz").unlink()
    with pytest.raises(InputError, match="no reference.*b"):
        evaluate_folders(tmp_path / "ref", tmp_path / "pred", LABELS, None, progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no segmentation files"):
        evaluate_folders(tmp_path / "ref", tmp_path / "empty", LABELS, None, progress=False)


def test_cli(tmp_path, capsys):
    from c2fnas_auto.cli.evaluate import main

    _cases(tmp_path)
    rc = main(["-ref", str(tmp_path / "ref"), "-pred", str(tmp_path / "pred"), "--labels", "1", "2",
               "--nsd-tolerance", "1"])
    assert rc == 0
    summary = json.loads((tmp_path / "pred" / "summary.json").read_text())
    assert set(summary["mean"]) == {"1", "2"}
    assert "foreground mean" in capsys.readouterr().out
    rc = main(["-ref", str(tmp_path / "nowhere"), "-pred", str(tmp_path / "pred"), "--labels", "1"])
    assert rc == 2
    assert "nowhere" in capsys.readouterr().err


def test_cli_labels_from_task(copy_task, tmp_path, capsys):
    from c2fnas_auto.cli.evaluate import main

    ref = copy_task.raw_dir / "labelsTs"
    pred = tmp_path / "pred"
    pred.mkdir()
    for f in ref.glob("*.nii.gz"):
        (pred / f.name).write_bytes(f.read_bytes())
    assert main(["-ref", str(ref), "-pred", str(pred), "-t", "98", "-o", str(tmp_path / "s.json")]) == 0
    s = json.loads((tmp_path / "s.json").read_text())
    assert {m["name"] for m in s["mean"].values()} == {k for k, v in copy_task.plans.labels.items() if v != 0}
    assert s["foreground_mean"]["Dice"] == pytest.approx(1.0) and s["foreground_mean"]["NSD"] == pytest.approx(1.0)


def test_missing_prediction_is_an_error_unless_counted_as_zero(tmp_path, capsys):
    """A failed prediction must not raise the mean: it stops the evaluation, or scores 0 when asked."""
    from c2fnas_auto.cli.evaluate import main

    _cases(tmp_path)
    full = evaluate_folders(tmp_path / "ref", tmp_path / "pred", LABELS, None, progress=False)
    assert full["missing_predictions"] == []
    (tmp_path / "pred" / "b.nii.gz").unlink()  # case b failed to predict
    with pytest.raises(InputError, match=r"no prediction for 1 reference case\(s\): b"):
        evaluate_folders(tmp_path / "ref", tmp_path / "pred", LABELS, None, progress=False)
    s = evaluate_folders(tmp_path / "ref", tmp_path / "pred", LABELS, None, progress=False, missing_as_zero=True)
    assert s["missing_predictions"] == ["b"]
    by_case = {c["case_id"]: c for c in s["per_case"]}
    assert by_case["b"]["missing"] and by_case["b"]["metrics"]["1"]["Dice"] == 0.0
    assert by_case["b"]["metrics"]["1"]["NSD"] == 0.0 and by_case["b"]["metrics"]["2"]["Dice"] == 0.0
    a1 = by_case["a"]["metrics"]["1"]["Dice"]
    assert s["mean"]["1"]["Dice"] == pytest.approx(a1 / 2)  # the failure pulls the mean down
    assert s["mean"]["2"]["Dice"] == 0.0  # label 2 is only in case b
    # only the listed cases are expected when case_ids is given (final validation of one fold)
    only_a = evaluate_folders(tmp_path / "ref", tmp_path / "pred", LABELS, None, progress=False, case_ids=["a"])
    assert [c["case_id"] for c in only_a["per_case"]] == ["a"]
    # the CLI: exit 2 with one line naming the case, or the flag and the case listed
    assert main(["-ref", str(tmp_path / "ref"), "-pred", str(tmp_path / "pred"), "--labels", "1", "2"]) == 2
    err = capsys.readouterr().err
    assert "no prediction for 1 reference case(s): b" in err and len(err.strip().splitlines()) == 1
    assert main(["-ref", str(tmp_path / "ref"), "-pred", str(tmp_path / "pred"), "--labels", "1", "2",
                 "--missing-as-zero"]) == 0
    assert "counted as Dice 0 (no prediction): b" in capsys.readouterr().out
