"""Connected-component postprocessing, decided from cross-validation.

Organs are usually one connected object, so stray islands of a class are often false
positives; but for tumours or vessels removing them can hurt. The decision is therefore
made per class from the validation predictions of trained folds, in two steps:

1. keep only the largest component, when that does not lower the class's mean validation
   Dice (and changes at least one case), as nnU-Net does;
2. then remove components smaller than half the smallest object of the class in the
   reference labels read, under the same rule. This is the step for lesions: several
   lesions per case rule out step 1, and a speck predicted in a case without a lesion
   scores Dice 0 for that case (nothing to find, something found), however good the
   lesions elsewhere are.

The decision is stored as `postprocessing.json` and applied by the predictor. A file
without the second step's key (written before it existed) applies step 1 only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from c2fnas_auto.data.image_io import read_segmentation
from c2fnas_auto.errors import InputError
from c2fnas_auto.evaluation.evaluate import segmentation_files
from c2fnas_auto.evaluation.metrics import Confusion, dice_from_confusion
from c2fnas_auto.utils.io import atomic_write_json, load_json

POSTPROCESSING_FILE = "postprocessing.json"


def _components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """26-connected component map and the voxel count of each component (index 0 = outside)."""
    components, _ = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))
    return components, np.bincount(components.ravel())


def keep_largest_component(seg: np.ndarray, label: int) -> np.ndarray:
    """Copy of `seg` where voxels of `label` outside its largest 26-connected component become 0."""
    mask = seg == label
    out = seg.copy()
    if not mask.any():
        return out
    components, sizes = _components(mask)
    if len(sizes) <= 2:  # background and one component
        return out
    keep = 1 + int(np.argmax(sizes[1:]))  # the first of equal largest ones
    out[mask & (components != keep)] = 0
    return out


def remove_small_components(seg: np.ndarray, label: int, min_voxels: int) -> np.ndarray:
    """Copy of `seg` where components of `label` with fewer than `min_voxels` voxels become 0."""
    mask = seg == label
    out = seg.copy()
    if not mask.any() or min_voxels <= 1:
        return out
    components, sizes = _components(mask)
    small = sizes < min_voxels
    small[0] = False
    out[small[components]] = 0
    return out


def smallest_object(seg: np.ndarray, label: int) -> int | None:
    """Voxels of the smallest 26-connected component of `label` (None when absent)."""
    mask = seg == label
    if not mask.any():
        return None
    _, sizes = _components(mask)
    return int(sizes[1:].min())


def _component_stats(pred: np.ndarray, ref: np.ndarray, label: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Voxels of each predicted component of `label`, how many of them the reference also
    labels `label`, and the reference's voxel count: enough for the Dice after removing any
    set of components (removed voxels become background, which only this label's Dice sees)."""
    mask, ref_mask = pred == label, ref == label
    if not mask.any():
        return np.zeros(0, np.int64), np.zeros(0, np.int64), int(ref_mask.sum())
    components, sizes = _components(mask)
    overlaps = np.bincount(components[ref_mask], minlength=len(sizes))
    return sizes[1:], overlaps[1:], int(ref_mask.sum())


def _largest_only(sizes: np.ndarray) -> np.ndarray:
    """Which components `keep_largest_component` keeps (the first of equal largest ones)."""
    keep = np.zeros(len(sizes), bool)
    if len(sizes):
        keep[int(np.argmax(sizes))] = True
    return keep


def _kept_dice(sizes: np.ndarray, overlaps: np.ndarray, ref_voxels: int, kept: np.ndarray) -> float:
    """`metrics.dice` of the prediction reduced to the `kept` components (NaN when both are empty)."""
    tp, n_pred = int(overlaps[kept].sum()), int(sizes[kept].sum())
    return dice_from_confusion(Confusion(tp=tp, fp=n_pred - tp, fn=ref_voxels - tp, n_ref=ref_voxels, n_pred=n_pred))


def apply_postprocessing(seg: np.ndarray, postprocessing: dict | None) -> np.ndarray:
    """Apply a decision dict ({"largest_component_labels": [...], "min_component_size":
    {label: voxels}}) in the order it was decided; None leaves `seg` as is."""
    if not postprocessing:
        return seg
    for label in postprocessing.get("largest_component_labels", []):
        seg = keep_largest_component(seg, int(label))
    for label, voxels in postprocessing.get("min_component_size", {}).items():
        seg = remove_small_components(seg, int(label), int(voxels))
    return seg


def load_postprocessing(path: str | os.PathLike) -> dict:
    data = load_json(path, "postprocessing file")
    if not isinstance(data, dict) or not isinstance(data.get("largest_component_labels"), list):
        raise InputError(f"{path}: postprocessing file has no 'largest_component_labels' list")
    sizes = data.get("min_component_size", {})
    if not isinstance(sizes, dict) or not all(str(k).isdigit() and isinstance(v, int) and v > 0
                                              for k, v in sizes.items()):
        raise InputError(f"{path}: 'min_component_size' must map labels to positive voxel counts")
    return data


def find_postprocessing(model_folder: str | os.PathLike, folds: Sequence[str | int]) -> Path | None:
    """The decision that fits a prediction: the results root's, else the single fold's."""
    model_folder = Path(model_folder)
    root = model_folder / POSTPROCESSING_FILE
    if root.is_file():
        return root
    if len(folds) == 1:
        fold_file = model_folder / f"fold_{folds[0]}" / POSTPROCESSING_FILE
        if fold_file.is_file():
            return fold_file
    return None


def _fold_dirs(results_dir: Path, folds: Iterable[str | int] | None) -> list[Path]:
    if folds is None:
        dirs = sorted(p for p in results_dir.glob("fold_*") if (p / "validation").is_dir())
    else:
        dirs = [results_dir / f"fold_{f}" for f in folds]
    for d in dirs:
        if not (d / "validation").is_dir():
            raise InputError(f"{d / 'validation'}: no validation predictions (train the fold first)")
    if not dirs:
        raise InputError(f"{results_dir}: no fold_*/validation folders to decide postprocessing from")
    return dirs


def determine_postprocessing(results_dir: str | os.PathLike, reference_folder: str | os.PathLike,
                             labels: dict[str, int], folds: Iterable[str | int] | None = None,
                             out_file: str | os.PathLike | None = None, progress: bool = True) -> dict:
    """Decide both postprocessing steps per class from fold validation predictions.

    `reference_folder` holds the raw labels (e.g. the task's `labelsTr`) named like the
    validation predictions. Writes `out_file` (default `results_dir/postprocessing.json`).

    One function: both decisions are made on the same loaded predictions in one pass, the second
    building on the first."""
    results_dir = Path(results_dir)
    reference_folder = Path(reference_folder)
    refs = segmentation_files(reference_folder) if reference_folder.is_dir() else {}
    if not refs:
        raise InputError(f"{reference_folder}: no reference segmentations found")
    fg = {name: int(v) for name, v in labels.items() if int(v) != 0}
    dirs = _fold_dirs(results_dir, folds)
    pairs = []
    for d in dirs:
        for case_id, pred_file in segmentation_files(d / "validation").items():
            if case_id not in refs:
                raise InputError(f"{reference_folder}: no reference for validation case {case_id} of {d.name}")
            pairs.append((pred_file, refs[case_id]))
    if not pairs:
        raise InputError(f"{results_dir}: validation folders hold no predictions")
    # One pass over the cases, keeping per case and class only its predicted components'
    # sizes and overlaps with the reference: both steps' Dice for any threshold follow
    # from them, so no volume is held in memory or labelled twice.
    stats: dict[int, list[tuple[np.ndarray, np.ndarray, int]]] = {v: [] for v in fg.values()}
    smallest: dict[int, int] = {}
    for pred_file, ref_file in tqdm(pairs, desc="postprocessing", unit="case", disable=not progress):
        pred, _ = read_segmentation(pred_file)
        ref, _ = read_segmentation(ref_file)
        if pred.shape != ref.shape:
            raise InputError(f"{pred_file}: shape {pred.shape} differs from reference {ref.shape}")
        for v in fg.values():
            stats[v].append(_component_stats(pred, ref, v))
            size = smallest_object(ref, v)
            if size is not None:
                smallest[v] = min(size, smallest.get(v, size))

    def mean(xs: list[float]) -> float | None:
        xs = [x for x in xs if not np.isnan(x)]
        return float(np.mean(xs)) if xs else None

    def better_or_equal(b: list[float], a: list[float], n_changed: int) -> bool:
        mb, ma = mean(b), mean(a)
        return mb is not None and ma is not None and n_changed > 0 and ma >= mb

    before = {v: [_kept_dice(sz, ov, r, np.ones(len(sz), bool)) for sz, ov, r in stats[v]] for v in fg.values()}
    after = {v: [_kept_dice(sz, ov, r, _largest_only(sz)) for sz, ov, r in stats[v]] for v in fg.values()}
    changed = {v: sum(len(sz) > 1 for sz, _, _ in stats[v]) for v in fg.values()}
    chosen = [v for v in fg.values() if better_or_equal(before[v], after[v], changed[v])]
    min_sizes: dict[str, int] = {}
    candidates: dict[str, dict] = {}
    for v, size in smallest.items():
        voxels = max(size // 2, 1)
        if voxels <= 1:
            continue  # nothing smaller than one voxel to remove
        b_list, a_list, n = [], [], 0
        for sz, ov, r in stats[v]:
            base = _largest_only(sz) if v in chosen else np.ones(len(sz), bool)
            kept = base & (sz >= voxels)
            b_list.append(_kept_dice(sz, ov, r, base))
            a_list.append(_kept_dice(sz, ov, r, kept))
            n += int(not np.array_equal(kept, base))
        candidates[str(v)] = {"voxels": voxels, "dice_before": mean(b_list), "dice_after": mean(a_list),
                              "cases_changed": n}
        if better_or_equal(b_list, a_list, n):
            min_sizes[str(v)] = voxels
    decision = {
        "largest_component_labels": chosen,
        "dice_before": {str(v): mean(before[v]) for v in fg.values()},
        "dice_after": {str(v): mean(after[v]) for v in fg.values()},
        "cases_changed": {str(v): changed[v] for v in fg.values()},
        "min_component_size": min_sizes,
        "min_size_candidates": candidates,
        "folds": [d.name for d in dirs],
        "num_cases": len(pairs),
    }
    atomic_write_json(out_file if out_file is not None else results_dir / POSTPROCESSING_FILE, decision)
    return decision
