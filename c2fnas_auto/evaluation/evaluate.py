"""Evaluate a folder of predicted segmentations against a folder of references.

Output `summary.json`: per case and label `Dice`, `NSD` and TP/FP/FN (voxels and mm^3),
the per-label mean over cases (NaN cases excluded, see metrics.py) and `foreground_mean`,
the mean of the per-label means. Pairs are matched by file name. A label absent from both
reference and prediction has Dice/NSD NaN (written as JSON `NaN`, as nnU-Net does).
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from c2fnas_auto.data.image_io import IMAGE_ENDINGS, read_segmentation
from c2fnas_auto.errors import InputError
from c2fnas_auto.evaluation.metrics import confusion, dice_from_confusion, normalized_surface_dice
from c2fnas_auto.utils.io import atomic_write_json

GEOMETRY_TOL = 1e-4


def segmentation_files(folder: Path) -> dict[str, Path]:
    """Image files in `folder` keyed by case id (file name without its image ending)."""
    out: dict[str, Path] = {}
    for p in sorted(Path(folder).iterdir()):
        if not p.is_file() or ".tmp-" in p.name:
            continue
        for ending in IMAGE_ENDINGS:
            if p.name.endswith(ending):
                out[p.name[: -len(ending)]] = p
                break
    return out


def _check_geometry(case_id: str, ref_geo: Any, pred_geo: Any, ref_shape: tuple, pred_shape: tuple) -> None:
    if tuple(ref_shape) != tuple(pred_shape):
        raise InputError(f"case {case_id}: prediction shape {tuple(pred_shape)} differs from reference "
                         f"{tuple(ref_shape)}")
    for field in ("spacing", "origin", "direction"):
        a = np.asarray(getattr(ref_geo, field), dtype=float)
        b = np.asarray(getattr(pred_geo, field), dtype=float)
        if a.shape != b.shape or not np.allclose(a, b, atol=GEOMETRY_TOL, rtol=GEOMETRY_TOL):
            raise InputError(f"case {case_id}: prediction {field} {b.tolist()} differs from reference {a.tolist()}")


def evaluate_case(ref_file: Path, pred_file: Path, labels: dict[str, int], nsd_tolerance_mm: float) -> dict:
    """Metrics of one case for every non-background label."""
    case_id = segmentation_case_id(pred_file)
    ref, ref_geo = read_segmentation(ref_file)
    pred, pred_geo = read_segmentation(pred_file)
    _check_geometry(case_id, ref_geo, pred_geo, ref.shape, pred.shape)
    spacing_zyx = tuple(float(s) for s in reversed(list(ref_geo.spacing)))
    voxel_mm3 = float(np.prod(spacing_zyx))
    metrics: dict[str, dict] = {}
    for name, value in labels.items():
        if int(value) == 0:
            continue
        c = confusion(pred, ref, int(value))
        nsd = normalized_surface_dice(pred, ref, int(value), spacing_zyx, nsd_tolerance_mm)
        metrics[str(value)] = {
            "name": name,
            "Dice": dice_from_confusion(c),
            "NSD": nsd,
            "tp": c.tp, "fp": c.fp, "fn": c.fn, "n_ref": c.n_ref, "n_pred": c.n_pred,
            "tp_mm3": c.tp * voxel_mm3, "fp_mm3": c.fp * voxel_mm3, "fn_mm3": c.fn * voxel_mm3,
        }
    return {"case_id": case_id, "reference_file": str(ref_file), "prediction_file": str(pred_file),
            "metrics": metrics}


def segmentation_case_id(path: Path) -> str:
    name = Path(path).name
    for ending in IMAGE_ENDINGS:
        if name.endswith(ending):
            return name[: -len(ending)]
    return name


def _mean(values: list[float]) -> float:
    """Mean without NaN entries (labels absent from reference and prediction); NaN if none left."""
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")


def summarize(per_case: list[dict], labels: dict[str, int]) -> dict:
    """Per-label means over cases and the foreground mean (mean of label means)."""
    mean: dict[str, dict] = {}
    for name, value in labels.items():
        if int(value) == 0:
            continue
        key = str(value)
        dices = [c["metrics"][key]["Dice"] for c in per_case if key in c["metrics"]]
        nsds = [c["metrics"][key]["NSD"] for c in per_case if key in c["metrics"]]
        mean[key] = {"name": name, "Dice": _mean(dices), "NSD": _mean(nsds),
                     "n_cases": sum(not math.isnan(v) for v in dices)}
    fg = {"Dice": _mean([m["Dice"] for m in mean.values()]), "NSD": _mean([m["NSD"] for m in mean.values()])}
    return {"mean": mean, "foreground_mean": fg}


def _evaluate_star(args: tuple) -> dict:
    return evaluate_case(*args)


def missing_case_result(case_id: str, ref_file: Path, labels: dict[str, int]) -> dict:
    """A reference case without a prediction, counted as a failure: Dice 0 and NSD 0 for every
    label the reference holds (NaN for labels it lacks: an empty prediction would be right there)."""
    ref, ref_geo = read_segmentation(ref_file)
    voxel_mm3 = float(np.prod(ref_geo.spacing))
    metrics: dict[str, dict] = {}
    for name, value in labels.items():
        if int(value) == 0:
            continue
        n_ref = int((ref == int(value)).sum())
        score = 0.0 if n_ref else float("nan")
        metrics[str(value)] = {"name": name, "Dice": score, "NSD": score, "tp": 0, "fp": 0, "fn": n_ref,
                               "n_ref": n_ref, "n_pred": 0, "tp_mm3": 0.0, "fp_mm3": 0.0, "fn_mm3": n_ref * voxel_mm3}
    return {"case_id": case_id, "reference_file": str(ref_file), "prediction_file": None, "missing": True,
            "metrics": metrics}


def evaluate_folders(ref_folder: str | os.PathLike, pred_folder: str | os.PathLike, labels: dict[str, int],
                     out_json: str | os.PathLike | None, nsd_tolerance_mm: float = 2.0,
                     num_workers: int = 1, progress: bool = True, case_ids: Sequence[str] | None = None,
                     missing_as_zero: bool = False) -> dict:
    """Score every expected case against the file of the same name in `ref_folder`.

    Expected: `case_ids`, or every reference in `ref_folder`. An expected case without a
    prediction is an error naming the missing cases (a mean over the predicted cases only would
    hide failures), unless `missing_as_zero`: then it scores Dice 0 / NSD 0 and is listed
    under `missing_predictions`."""
    ref_folder, pred_folder = Path(ref_folder), Path(pred_folder)
    for folder, what in ((ref_folder, "reference"), (pred_folder, "prediction")):
        if not folder.is_dir():
            raise InputError(f"{folder}: {what} folder not found")
    if nsd_tolerance_mm < 0:
        raise InputError(f"NSD tolerance {nsd_tolerance_mm} mm must not be negative")
    if not labels or not any(int(v) != 0 for v in labels.values()):
        raise InputError("no foreground labels given to evaluate")
    refs = segmentation_files(ref_folder)
    preds = segmentation_files(pred_folder)
    if not preds and not missing_as_zero:
        raise InputError(f"{pred_folder}: no segmentation files ({', '.join(IMAGE_ENDINGS)}) found")
    expected = list(case_ids) if case_ids is not None else list(refs)
    no_ref = [c for c in expected if c not in refs]
    if no_ref:
        raise InputError(f"{ref_folder}: no reference for case(s) {', '.join(no_ref[:5])}")
    extra = [c for c in preds if c not in refs]
    if extra:
        raise InputError(f"{ref_folder}: no reference for prediction(s) {', '.join(extra[:5])}")
    missing = [c for c in expected if c not in preds]
    if missing and not missing_as_zero:
        raise InputError(f"{pred_folder}: no prediction for {len(missing)} reference case(s): "
                         f"{', '.join(missing)} (pass --missing-as-zero to count them as Dice 0)")
    scored = [c for c in expected if c in preds] if case_ids is not None else list(preds)
    jobs = [(refs[c], preds[c], labels, nsd_tolerance_mm) for c in scored]
    bar = dict(total=len(jobs), desc="evaluate", unit="case", disable=not progress)
    if num_workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=num_workers) as pool:
            per_case = list(tqdm(pool.map(_evaluate_star, jobs), **bar))
    else:
        per_case = [evaluate_case(*j) for j in tqdm(jobs, **bar)]
    per_case += [missing_case_result(c, refs[c], labels) for c in missing]
    summary = {"reference_folder": str(ref_folder), "prediction_folder": str(pred_folder),
               "labels": {k: int(v) for k, v in labels.items()}, "nsd_tolerance_mm": float(nsd_tolerance_mm),
               "missing_predictions": missing, **summarize(per_case, labels), "per_case": per_case}
    if out_json is not None:
        atomic_write_json(out_json, summary)
    return summary


def labels_from_references(ref_folder: str | os.PathLike) -> dict[str, int]:
    """Every value found in the reference files, as {str(value): value} (fallback without a task)."""
    values: set[int] = set()
    for f in segmentation_files(Path(ref_folder)).values():
        seg, _ = read_segmentation(f)
        values.update(int(v) for v in np.unique(seg))
    return {str(v): v for v in sorted(values)}
