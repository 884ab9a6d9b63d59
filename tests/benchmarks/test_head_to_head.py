"""The head-to-head benchmark's machinery on a tiny synthetic task with tiny schedules."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import head_to_head  # noqa: E402
from benchmarks.h2h.calibrate import Calibration, fit  # noqa: E402
from benchmarks.h2h.cells import cell_name  # noqa: E402
from benchmarks.h2h.report import markdown_table, summarize  # noqa: E402
from benchmarks.h2h.sides import Schedule, StepFailed, measured, parse_nnunet_log  # noqa: E402
from benchmarks.h2h.tasks import prepare_hippocampus, split_test  # noqa: E402
from c2fnas_auto.errors import C2FNASError, InputError  # noqa: E402

TINY = ["--tasks", "synthetic", "--synthetic-cases", "6", "2", "--synthetic-shape", "16", "32", "32",
        "--budgets", "1", "--seeds", "0", "--iterations", "2", "--calibration-iters", "1", "--no-mirroring"]


def test_schedule_keeps_epochs_near_nnunets_length():
    assert Schedule.for_iterations(5000) == Schedule(20, 250)
    assert Schedule.for_iterations(1200) == Schedule(10, 120)  # at least 10 epochs: the poly rate decays
    assert Schedule.for_iterations(122) == Schedule(10, 12)
    assert Schedule.for_iterations(2) == Schedule(2, 1)
    assert Schedule.for_iterations(0).total == 1
    assert Schedule(5, 240).val_iters == 48 and Schedule(1, 3).val_iters == 1


def test_calibration_fit_uses_the_steady_epochs_and_the_rest_is_fixed():
    c, a = fit([30.0, 10.0, 12.0], iters=10, wall_s=80.0)
    assert c == pytest.approx(1.1) and a == pytest.approx(28.0)
    cal = Calibration("t", "ours", c, a, 80.0, 70.0, 30, [30.0, 10.0, 12.0], [1, 1, 1], [1, 1, 1], 2, "now")
    assert cal.schedule(28.0 + 1.1 * 600).total == pytest.approx(600, abs=2)
    assert cal.schedule(1.0).total >= 10  # a budget below the fixed cost still trains a little
    with pytest.raises(C2FNASError, match="no epoch times"):
        fit([], iters=10, wall_s=5.0)


def test_test_split_is_seeded_disjoint_and_checked():
    ids = [f"c{i:03d}" for i in range(20)]
    train, test = split_test(ids, 5, seed=0)
    assert (train, test) == split_test(list(reversed(ids)), 5, seed=0)
    assert len(test) == 5 and not set(train) & set(test) and sorted(train + test) == ids
    with pytest.raises(InputError, match="impossible"):
        split_test(ids, 20, seed=0)


def test_hippocampus_without_its_dataset_json_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="dataset.json: missing"):
        prepare_hippocampus(tmp_path / "nope", tmp_path / "work")


def test_nnunet_log_parsing_reads_numpy_reprs():
    text = ("t: Pseudo dice [np.float32(0.5), np.float32(0.7)] \nt: Epoch time: 3.5 s \n"
            "t: Pseudo dice [0.25, nan] \nt: Epoch time: 2.0 s \n")
    curve = parse_nnunet_log(text)
    assert curve[0] == [3.5, pytest.approx(0.6)] and curve[1][0] == 5.5


def test_a_failing_tool_command_names_its_log(tmp_path):
    log = tmp_path / "logs" / "x.log"
    with pytest.raises(StepFailed, match="x.log.*exit code 3"):
        measured([sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"], log, env=None)
    assert "boom" in log.read_text()


def test_a_training_ab_arm_passes_its_option_to_training_only(tmp_path, monkeypatch):
    from benchmarks.h2h import sides
    from benchmarks.h2h.tasks import TaskSpec

    cmds = []
    monkeypatch.setattr(sides, "measured", lambda cmd, log, env: cmds.append(cmd))
    spec = TaskSpec("t", 999, tmp_path, tmp_path / "imgs", tmp_path / "labs", {"background": 0}, [], [])
    arm, s = sides.ARMS["ours_ds"], sides.Settings(tmp_path)
    arm.train(spec, s, Schedule(10, 2), 0, tmp_path / "cell")
    arm.predict(spec, s, tmp_path / "cell")
    train_cmd, predict_cmd = cmds
    assert train_cmd[train_cmd.index("--deep-supervision") + 1] == "on" and "--deep-supervision" not in predict_cmd


@pytest.mark.parametrize("width", [None, 16])
def test_our_planner_gets_the_base_width_only_when_one_is_asked_for(tmp_path, monkeypatch, width):
    from benchmarks.h2h import sides
    from benchmarks.h2h.tasks import TaskSpec

    cmds = []

    def fake_measured(cmd, log, env):  # what our planner would write, where it would write it
        cmds.append(cmd)
        root = Path(env["C2FNAS_preprocessed"]) / spec.name
        root.mkdir(parents=True, exist_ok=True)
        (root / "plans.json").write_text(json.dumps({"patch_size": [8, 8, 8], "batch_size": 2}))
        return sides.Measured(1.0, 1.0, None, None)

    monkeypatch.setattr(sides, "measured", fake_measured)
    monkeypatch.setattr(sides, "write_splits", lambda spec, folder: None)
    spec = TaskSpec("t", 999, tmp_path / "Dataset999_T", tmp_path / "imgs", tmp_path / "labs", {"background": 0},
                    [], [])
    info = sides.ARMS["ours"].prepare(spec, sides.Settings(tmp_path, ours_base_channels=width))
    shared, default = cmds  # the shared target's plans, then the planner's own default (recorded only)
    assert ("--base-channels" in shared) == (width is not None) and "--base-channels" not in default
    assert info["plan"].get("base_channels") == width


def _cell(arm: str, seed: int, dice: float) -> dict:
    return {"task": "t", "arm": arm, "budget_min": 20, "seed": seed, "mirroring": True,
            "test": {"dice": dice, "dice_per_class": {"a": dice}}, "schedule": {"iterations": 100},
            "plan": {"patch_size": [8, 8, 8], "batch_size": 2}, "train": {"wall_s": 1.0, "cpu_s": 2.0,
                                                                         "peak_tree_pss_bytes": 5},
            "predicted_train_s": 1.0, "nnunet_evaluator": None}


def test_summary_gives_seed_spread_and_the_difference_to_nnunet():
    cells = [_cell("nnunet", 0, 0.8), _cell("nnunet", 1, 0.6), _cell("ours", 0, 0.75), _cell("ours", 1, 0.7)]
    cells[0]["val_curve"], cells[1]["val_curve"] = [[60.0, 0.1], [1200.0, 0.5]], [[1200.0, 0.3]]
    cells[2]["val_curve"], cells[3]["val_curve"] = [[120.0, 0.2], [240.0, 0.45], [360.0, 0.3]], [[60.0, 0.1]]
    s = summarize(cells)["t"]["20"]
    assert s["nnunet"]["test_dice"]["mean"] == pytest.approx(0.7) and s["nnunet"]["test_dice"]["sd"] > 0
    assert s["ours"]["minus_nnunet"] == pytest.approx(0.025) and s["ours"]["test_dice"]["sd"] > 0
    reach = s["ours"]["minutes_to_nnunet_final_val_dice"]  # nnU-Net's final: mean of 0.5 and 0.3
    assert reach["target"] == pytest.approx(0.4) and reach["per_seed"] == [pytest.approx(4.0), None]
    assert summarize([_cell("ours", 0, 0.7)])["t"]["20"]["ours"]["minutes_to_nnunet_final_val_dice"] is None
    table = markdown_table(summarize(cells))
    assert "| t | 20 min | ours | 8x8x8 x 2 | 100, 100 | 0.725 (0.035) | 0.750, 0.700 |" in table
    assert "| 4.0 / not reached |" in table


def test_missing_hippocampus_folder_is_a_one_line_cli_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        head_to_head.main(["--tasks", "hippocampus", "--workdir", str(tmp_path), "--results", str(tmp_path / "r")])
    assert exc.value.code == 2
    assert "head_to_head: error: --hippocampus DIR is required" in capsys.readouterr().err


def _run(tmp_path, arm: str) -> Path:
    results = tmp_path / "results"
    assert head_to_head.main([*TINY, "--arms", arm, "--workdir", str(tmp_path / "work"),
                              "--results", str(results)]) == 0
    return results


def _check_cell(results: Path, arm: str) -> dict:
    cell = results / "cells" / f"{cell_name('synthetic', arm, 1, 0, mirroring=False)}.json"
    rec = json.loads(cell.read_text())
    assert rec["schedule"]["iterations"] == 2 and rec["mirroring"] is False
    assert 0.0 <= rec["test"]["dice"] <= 1.0 and set(rec["test"]["dice_per_class"]) == {"organ", "lesion"}
    assert rec["train"]["wall_s"] > 0 and rec["train"]["peak_tree_pss_bytes"]
    assert rec["plan"]["gpu_memory_gb"] == 0.5 and rec["default_plan"]["gpu_memory_gb"] == 8.0
    assert (results / "calibration" / f"synthetic__{arm}.json").is_file()
    summary = json.loads((results / "summary.json").read_text())
    assert summary["synthetic"]["1"][arm + " (no mirroring)"]["seeds"] == [0]
    assert (results / "head_to_head.png").stat().st_size > 0
    return rec


def test_our_arm_end_to_end_and_resumable(tmp_path):
    results = tmp_path / "results"
    assert head_to_head.main([*TINY, "--arms", "ours", "--workdir", str(tmp_path / "work"), "--results",
                              str(results), "--calibrate-only"]) == 0
    assert (results / "calibration" / "synthetic__ours.json").is_file()
    assert not list((results / "cells").glob("*.json"))  # calibrated only: no cell ran
    results = _run(tmp_path, "ours")
    rec = _check_cell(results, "ours")
    assert rec["val_curve"] and rec["tool"] == "ours"
    cell = next((results / "cells").glob("*.json"))
    before = cell.stat().st_mtime_ns
    _run(tmp_path, "ours")  # the cell's file exists: nothing runs again
    assert cell.stat().st_mtime_ns == before
    # cut off after training (no cell file yet): the rerun predicts and scores, it does not train again
    train_log = tmp_path / "work" / "cells" / cell.stem / "logs" / "train.log"
    trained = train_log.stat().st_mtime_ns
    cell.unlink()
    _run(tmp_path, "ours")
    rec = json.loads(cell.read_text())
    assert train_log.stat().st_mtime_ns == trained and rec["train"]["wall_s"] > 0
    # the prediction resumed too: the newest output was predicted again, the others were kept
    assert rec["predict"]["parts"] == 2 and len(list((train_log.parent.parent / "pred").glob("*.nii.gz"))) == 2


def test_a_killed_prediction_part_is_counted_from_its_start_to_its_last_output(tmp_path):
    from benchmarks.h2h.cells import PREDICT_RECORD, predict_resumably
    from benchmarks.h2h.sides import Measured

    class FakeArm:
        def predict(self, spec, s, out):
            return Measured(2.0, 1.5, 10, 7)

    pred = tmp_path / "pred"
    pred.mkdir()
    for name, t in (("a.nii.gz", 1000), ("b.nii.gz", 1030)):
        (pred / name).write_bytes(b"x")
        os.utime(pred / name, (t, t))
    (tmp_path / PREDICT_RECORD).write_text(json.dumps({"parts": [{"started_unix": 900.0, "wall_s": None}]}))
    rec = predict_resumably(FakeArm(), None, None, tmp_path)
    assert rec["parts"] == 2 and rec["cut_off_parts"] == 1
    assert rec["wall_s"] == pytest.approx(130.0 + 2.0) and rec["cpu_s"] is None  # the killed part's CPU is unknown
    assert rec["peak_tree_pss_bytes"] == 10 and not (pred / "b.nii.gz").exists()  # the newest output goes again
    parts = json.loads((tmp_path / PREDICT_RECORD).read_text())["parts"]
    assert parts[0]["cut_off"] and parts[1]["wall_s"] == 2.0


def test_drop_newest_removes_only_the_last_written_file(tmp_path):
    from benchmarks.h2h.cells import drop_newest

    assert drop_newest(tmp_path / "missing") is None and drop_newest(tmp_path) is None
    for i, name in enumerate(("a.nii.gz", "b.nii.gz")):
        (tmp_path / name).write_bytes(b"x")
        os.utime(tmp_path / name, ns=(i * 10**9, i * 10**9))
    assert drop_newest(tmp_path).name == "b.nii.gz" and [f.name for f in tmp_path.iterdir()] == ["a.nii.gz"]


@pytest.mark.slow
def test_nnunet_arm_end_to_end(tmp_path):
    pytest.importorskip("nnunetv2")
    rec = _check_cell(_run(tmp_path, "nnunet"), "nnunet")
    assert rec["nnunet_evaluator"]["dice"] == pytest.approx(rec["test"]["dice"], abs=1e-6)


def test_a_cell_counts_as_done_only_under_the_calibration_it_ran_with(tmp_path):
    from benchmarks.h2h.cells import is_current

    cal = Calibration("t", "ours", 1.0, 0.0, 1.0, 1.0, 2, [1.0], [0, 0, 0], [0, 0, 0], 2, "2026-01-01T00:00:00Z")
    path = tmp_path / "cell.json"
    assert not is_current(path, cal)
    path.write_text(json.dumps({"calibration": {"date": cal.date}}))
    assert is_current(path, cal)
    path.write_text(json.dumps({"calibration": {"date": "2025-01-01T00:00:00Z"}}))
    assert not is_current(path, cal)  # recalibrated since: the cell runs again


def test_partial_score_compares_the_arms_on_the_cases_both_predicted(tmp_path):
    import nibabel as nib
    import numpy as np

    from benchmarks.h2h import partial_score

    work, lab = tmp_path / "work", np.zeros((4, 4, 4), np.uint8)
    lab[:2, :2, :2], lab[2:, 2:, 2:] = 1, 2
    (work / "tasks" / "hippocampus" / "labels").mkdir(parents=True)
    for c in ("a", "b"):
        nib.save(nib.Nifti1Image(lab, np.eye(4)), work / "tasks" / "hippocampus" / "labels" / f"{c}.nii.gz")
    (work / "tasks" / "hippocampus" / "h2h_task.json").write_text(json.dumps(
        {"labels": {"background": 0, "anterior": 1, "posterior": 2}, "test_ids": ["a", "b"],
         "test_labels": str(work / "tasks" / "hippocampus" / "labels")}))
    for arm, cases, pred in (("nnunet", ["a"], np.zeros_like(lab)), ("ours", ["a", "b"], lab)):
        d = work / "cells" / f"hippocampus__{arm}__20min__seed0" / "pred"
        d.mkdir(parents=True)
        for c in cases:
            nib.save(nib.Nifti1Image(pred, np.eye(4)), d / f"{c}.nii.gz")
    assert partial_score.main(["--workdir", str(work), "--results", str(tmp_path / "r"), "--settle-s", "0"]) == 0
    out = json.loads((tmp_path / "r" / "partial_20min_seed0.json").read_text())
    assert out["partial"] and out["common_cases"] == ["a"] and out["ours_predicted"]["cases"] == 2
    assert out["ours_common"]["dice"] == pytest.approx(1.0) and out["nnunet_common"]["dice"] == pytest.approx(0.0)


def test_partial_score_without_a_prepared_task_is_a_one_line_error(tmp_path, capsys):
    from benchmarks.h2h import partial_score

    with pytest.raises(SystemExit) as exc:
        partial_score.main(["--workdir", str(tmp_path / "none")])
    assert exc.value.code == 2 and "partial_score: error:" in capsys.readouterr().err


@pytest.mark.parametrize("fast", [False, True])
def test_the_bf16_arm_is_left_out_with_its_reason_only_where_bf16_runs_a_reference_kernel(monkeypatch, capsys, fast):
    from benchmarks.head_to_head import runnable_arms
    from c2fnas_auto.nas import execution

    monkeypatch.setattr(execution, "cpu_bf16_is_fast", lambda: fast)
    kept = runnable_arms(["nnunet", "ours", "ours_bf16", "ours_ds"])
    assert kept == (["nnunet", "ours", "ours_bf16", "ours_ds"] if fast else ["nnunet", "ours", "ours_ds"])
    out = capsys.readouterr().out
    assert ("ours_bf16 left out: not measured" in out) == (not fast)


def test_an_arms_execution_options_become_the_cli_flags_its_commands_pass():
    from benchmarks.h2h.sides import ARMS

    assert ARMS["ours_bf16"].extra == ("--precision", "bf16")
    assert ARMS["ours"].extra == () and ARMS["ours_ds"].train_extra == ("--deep-supervision", "on")


def test_the_component_diagnosis_separates_scattered_false_positives_from_the_main_structure(tmp_path):
    import numpy as np
    import SimpleITK as sitk

    from benchmarks.h2h.diagnose_components import case_record, diagnose

    ref = np.zeros((16, 16, 16), np.uint8)
    ref[4:8, 4:8, 4:8] = 1
    pred = ref.copy()
    pred[12:14, 12:14, 12:14] = 1  # a distant false positive, 8 voxels against 64
    rec = case_record(pred, ref, [1])
    assert rec["components"] == 2 and abs(rec["outside_largest"] - 8 / 72) < 1e-9
    assert rec["dice"] < 1.0 and rec["dice_largest_only"] == 1.0 and rec["volume_ratio"] == 72 / 64
    for d, arr in (("pred", pred), ("ref", ref)):
        (tmp_path / d).mkdir()
        sitk.WriteImage(sitk.GetImageFromArray(arr), str(tmp_path / d / "case_000.nii.gz"))
    out = diagnose(tmp_path / "pred", tmp_path / "ref")
    assert out["cases"] == 1 and out["components_median"] == 2.0 and out["dice_largest_fg_component_only_mean"] == 1.0


def test_the_component_diagnosis_of_an_empty_folder_is_a_one_line_error(tmp_path):
    from benchmarks.h2h.diagnose_components import main

    with pytest.raises(SystemExit, match="no \\*.nii.gz predictions in"):
        main([str(tmp_path), str(tmp_path)])


def test_the_component_diagnosis_names_a_missing_or_bad_reference_in_one_line(tmp_path):
    import numpy as np
    import SimpleITK as sitk

    from benchmarks.h2h.diagnose_components import main

    (tmp_path / "pred").mkdir()
    (tmp_path / "ref").mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 4, 4), np.uint8)), str(tmp_path / "pred" / "c.nii.gz"))
    with pytest.raises(SystemExit, match="no reference label for"):
        main([str(tmp_path / "pred"), str(tmp_path / "ref")])
    sitk.WriteImage(sitk.GetImageFromArray(np.full((4, 4, 4), 0.5, np.float32)), str(tmp_path / "ref" / "c.nii.gz"))
    with pytest.raises(SystemExit, match="non-integer values"):
        main([str(tmp_path / "pred"), str(tmp_path / "ref")])


def _cell_file(path: Path, per_case: dict[str, float]) -> Path:
    path.write_text(json.dumps({"test": {"dice": sum(per_case.values()) / len(per_case), "dice_per_case": per_case}}))
    return path


def test_the_paired_comparison_pairs_cells_by_seed_and_case(tmp_path, capsys):
    from benchmarks.h2h import paired

    a = [_cell_file(tmp_path / f"a{s}.json", {"c1": 0.9, "c2": 0.8, "c3": 0.7 + s / 10}) for s in range(2)]
    b = [_cell_file(tmp_path / f"b{s}.json", {"c1": 0.5, "c2": 0.6, "c3": 0.7}) for s in range(2)]
    out = paired.compare(a, b)
    assert out["cases"] == 3 and out["seeds"] == 2 and out["interval_covers"] == "cases and seeds"
    assert out["difference"]["diff"] == pytest.approx(((0.4 + 0.2 + 0.0) + (0.4 + 0.2 + 0.1)) / 6)
    assert out["a_better_cases"] == 3 and out["b_better_cases"] == 0
    # restricted to one case, and one seed: the interval covers case noise only
    one = paired.compare(a[:1], b[:1], cases=["c3"])
    assert one["cases"] == 1 and one["difference"]["diff"] == pytest.approx(0.0)
    assert one["interval_covers"].startswith("cases only")
    assert paired.main(["--a", str(a[0]), "--b", str(b[0]), "--out", str(tmp_path / "ab.json")]) == 0
    assert json.loads((tmp_path / "ab.json").read_text())["case_ids"] == ["c1", "c2", "c3"]
    assert "A - B = +0.200" in capsys.readouterr().out


@pytest.mark.parametrize("problem", ["unequal", "unfinished", "unknown_case", "no_common"])
def test_the_paired_comparison_names_what_is_wrong_in_one_line(tmp_path, capsys, problem):
    from benchmarks.h2h import paired

    a = _cell_file(tmp_path / "a.json", {"c1": 0.9})
    b = _cell_file(tmp_path / "b.json", {"c2": 0.5} if problem == "no_common" else {"c1": 0.5})
    args = {"unequal": ["--a", str(a), str(a), "--b", str(b)],
            "unfinished": ["--a", str(a), "--b", str(tmp_path / "u.json")],
            "unknown_case": ["--a", str(a), "--b", str(b), "--cases", "c9"],
            "no_common": ["--a", str(a), "--b", str(b)]}[problem]
    if problem == "unfinished":
        (tmp_path / "u.json").write_text(json.dumps({"train": {}}))
    with pytest.raises(SystemExit) as exc:
        paired.main(args)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("paired: error:") and err.count("\n") == 1
    assert {"unequal": "give one per seed", "unfinished": "u.json: no test.dice_per_case",
            "unknown_case": "c9", "no_common": "share no scored test case"}[problem] in err


def test_the_paired_comparison_reads_its_cases_from_a_partial_score(tmp_path):
    from benchmarks.h2h import paired

    a = _cell_file(tmp_path / "a.json", {"c1": 0.9, "c2": 0.1})
    b = _cell_file(tmp_path / "b.json", {"c1": 0.5, "c2": 0.5})
    (tmp_path / "partial.json").write_text(json.dumps({"common_cases": ["c1"]}))
    assert paired.main(["--a", str(a), "--b", str(b), "--cases-from", str(tmp_path / "partial.json"),
                        "--out", str(tmp_path / "ab.json")]) == 0
    assert json.loads((tmp_path / "ab.json").read_text())["case_ids"] == ["c1"]
    (tmp_path / "bad.json").write_text(json.dumps({"cases": 1}))
    with pytest.raises(SystemExit, match="2"):
        paired.main(["--a", str(a), "--b", str(b), "--cases-from", str(tmp_path / "bad.json")])
