"""One cell of the head-to-head: (task, arm, budget, seed) -> one results JSON.

A cell trains its arm's schedule for the budget, predicts the held-out test set, and scores
it with our evaluator (`c2fnas_auto.evaluation`), cross-checked against nnU-Net's own
`compute_metrics_on_folder_simple` where nnunetv2 is installed. A cell whose file exists
under the arm's current calibration is skipped, so the benchmark resumes where it stopped.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from benchmarks.common import have_module
from benchmarks.h2h.calibrate import Calibration
from benchmarks.h2h.sides import Arm, Schedule, Settings
from benchmarks.h2h.tasks import TaskSpec
from c2fnas_auto.evaluation.evaluate import evaluate_folders
from c2fnas_auto.utils.io import atomic_write_json, load_json


def cell_name(task: str, arm: str, budget_min: float, seed: int, mirroring: bool = True) -> str:
    """The cell's file stem; cells predicted without test-time mirroring are kept apart."""
    return f"{task}__{arm}__{budget_min:g}min__seed{seed}" + ("" if mirroring else "__nomirror")


def score(spec: TaskSpec, pred: Path, out_json: Path) -> dict[str, Any]:
    """Test Dice (foreground mean and per class) by our evaluator."""
    s = evaluate_folders(spec.test_labels, pred, spec.labels, out_json, progress=False,
                         case_ids=spec.test_ids)
    per_class = {m["name"]: m["Dice"] for m in s["mean"].values()}
    return {"dice": s["foreground_mean"]["Dice"], "dice_per_class": per_class, "nsd": s["foreground_mean"]["NSD"],
            "dice_per_case": {c["case_id"]: _case_mean(c) for c in s["per_case"]}}


def _case_mean(case: dict) -> float:
    vals = [m["Dice"] for m in case.get("metrics", {}).values()]
    return sum(vals) / len(vals) if vals else float("nan")


def nnunet_cross_check(spec: TaskSpec, pred: Path, out_json: Path) -> dict[str, Any] | None:
    """nnU-Net's own evaluator on the same folders (None where nnunetv2 is not installed)."""
    if not have_module("nnunetv2"):
        return None
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder_simple

    labels = sorted(v for v in spec.labels.values() if v)
    compute_metrics_on_folder_simple(str(spec.test_labels), str(pred), labels, str(out_json), num_processes=1,
                                     chill=False)
    r = load_json(out_json, "nnU-Net evaluation summary")
    return {"dice": float(r["foreground_mean"]["Dice"]),
            "dice_per_class": {str(k): float(v["Dice"]) for k, v in r["mean"].items()}}


def is_current(path: Path, cal: Calibration) -> bool:
    """The cell's file exists and was run under this calibration (a recalibration, in a quieter
    session say, changes what a budget buys, so the cells run under the old one run again)."""
    if not path.is_file():
        return False
    return load_json(path, "head-to-head cell").get("calibration", {}).get("date") == cal.date


TRAIN_RECORD = "train_done.json"


def finished_training(out: Path, sched: Schedule, cal: Calibration) -> dict[str, Any] | None:
    """The record a finished training left in the cell's folder (its measurements), when it was
    of this schedule under this calibration; then a cell cut off while predicting resumes there
    instead of training again (on 2 CPU cores nnU-Net's mirrored prediction of 40 cases can take
    longer than the training)."""
    path = out / TRAIN_RECORD
    if not path.is_file():
        return None
    rec = load_json(path, "head-to-head training record")
    if rec.get("schedule") != [sched.epochs, sched.iters] or rec.get("calibration_date") != cal.date:
        return None
    return rec


PREDICT_RECORD = "predict_parts.json"


def _newest_file(folder: Path) -> Path | None:
    files = [f for f in folder.iterdir() if f.is_file()] if folder.is_dir() else []
    return max(files, key=lambda f: f.stat().st_mtime_ns, default=None)


def drop_newest(folder: Path) -> Path | None:
    """Remove the most recently written file in `folder`: the only one a process killed while
    exporting can have left half-written (nnU-Net writes its outputs in place)."""
    newest = _newest_file(folder)
    if newest is not None:
        newest.unlink()
    return newest


def _close_cut_off(part: dict[str, Any], pred: Path) -> dict[str, Any]:
    """A part that was killed left no measurement: its wall time is taken as the span from its
    start to its last written output; its CPU time and peaks are unknown (None)."""
    newest = _newest_file(pred)
    last = part["started_unix"] if newest is None else newest.stat().st_mtime
    return {**part, "wall_s": max(0.0, last - part["started_unix"]), "cpu_s": None, "peak_tree_pss_bytes": None,
            "peak_single_rss_bytes": None, "cut_off": True}


def predict_resumably(arm: Arm, spec: TaskSpec, s: Settings, out: Path) -> dict[str, Any]:
    """Predict the cases not yet in pred/; the measurements of every part are kept in the cell's
    folder (a part is recorded as started before it runs, so a killed one is still counted), and
    the record gives their sums (wall and CPU time) and the largest peaks."""
    parts_file = out / PREDICT_RECORD
    parts = load_json(parts_file, "head-to-head prediction record")["parts"] if parts_file.is_file() else []
    parts = [_close_cut_off(p, out / "pred") if p.get("wall_s") is None else p for p in parts]
    dropped = drop_newest(out / "pred")
    if parts or dropped is not None:
        print(f"head_to_head: {out.name}: resuming prediction after {len(parts)} part(s)"
              + (f", {dropped.name} predicted again" if dropped else ""), flush=True)
    started = {"started_unix": time.time(), "wall_s": None}
    atomic_write_json(parts_file, {"parts": [*parts, started]})
    parts.append({**started, **arm.predict(spec, s, out).to_dict()})
    atomic_write_json(parts_file, {"parts": parts})
    cpu = [p["cpu_s"] for p in parts]
    peaks = [[p[k] for p in parts if p[k] is not None] for k in ("peak_tree_pss_bytes", "peak_single_rss_bytes")]
    return {"wall_s": sum(p["wall_s"] for p in parts),
            "cpu_s": None if None in cpu else sum(cpu),  # unknown when a part was killed
            "peak_tree_pss_bytes": max(peaks[0], default=None), "peak_single_rss_bytes": max(peaks[1], default=None),
            "parts": len(parts), "cut_off_parts": sum(1 for p in parts if p.get("cut_off"))}


def run_cell(spec: TaskSpec, arm: Arm, cal: Calibration, budget_min: float, seed: int, s: Settings,
             results_dir: Path, prepared: dict[str, Any], schedule: Schedule | None = None) -> Path:
    """Run the cell unless its results file exists; return that file."""
    name = cell_name(spec.key, arm.name, budget_min, seed, s.mirroring)
    path = results_dir / "cells" / f"{name}.json"
    if is_current(path, cal):
        return path
    out = s.workdir / "cells" / name
    sched = schedule or cal.schedule(budget_min * 60.0)
    done = finished_training(out, sched, cal)
    if done is None:
        shutil.rmtree(out, ignore_errors=True)  # a training cut off half-way starts again
        load_before = list(os.getloadavg())
        train = arm.train(spec, s, sched, seed, out)
        load_after = list(os.getloadavg())
        done = {"train": train.to_dict(), "schedule": [sched.epochs, sched.iters], "calibration_date": cal.date,
                "loadavg_train_start": load_before, "loadavg_train_end": load_after}
        atomic_write_json(out / TRAIN_RECORD, done)
    predict = predict_resumably(arm, spec, s, out)
    pp = arm.postprocess(spec, s, out)
    final_pred = out / ("pred_pp" if pp.get("applied") else "pred")
    test = score(spec, final_pred, out / "summary.json")
    raw_test = score(spec, out / "pred", out / "summary_raw.json") if pp.get("applied") else None
    record = {
        "task": spec.key, "arm": arm.name, "tool": arm.tool, "options": list(arm.extra),
        "train_options": list(arm.train_extra),
        "budget_min": budget_min, "seed": seed, "threads": s.threads, "mirroring": s.mirroring,
        "final_validation": s.final_validation,
        "gpu_memory_gb": s.gpu_memory_gb, "plan": prepared.get("plan"), "default_plan": prepared.get("default_plan"),
        "schedule": {"epochs": sched.epochs, "iters_per_epoch": sched.iters, "val_iters_per_epoch": sched.val_iters,
                     "iterations": sched.total},
        "calibration": {"seconds_per_iteration": cal.seconds_per_iteration, "fixed_seconds": cal.fixed_seconds,
                        "date": cal.date, "loadavg_before": cal.loadavg_before},
        "predicted_train_s": cal.fixed_seconds + sched.total * cal.seconds_per_iteration,
        "train": done["train"], "predict": predict,
        "loadavg_train_start": done["loadavg_train_start"], "loadavg_train_end": done["loadavg_train_end"],
        "train_note": done.get("note"),
        "postprocessing": pp, "test": test, "test_without_postprocessing": raw_test,
        "nnunet_evaluator": nnunet_cross_check(spec, final_pred, out / "summary_nnunet_eval.json"),
        "val_curve": arm.curve(out), "test_cases": len(spec.test_ids), "train_cases": len(spec.train_ids),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    atomic_write_json(path, record)
    return path
