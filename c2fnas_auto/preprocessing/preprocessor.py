"""Preprocess one case or a whole task: crop -> transpose -> resample -> normalize.

`preprocess_case` is the one code path for training data and prediction inputs, so
both see exactly the same transform. `preprocess_dataset` runs it over a task's
training cases in parallel, skipping finished ones, and redoes everything when the
preprocessing-relevant part of the plans changed since the last run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from c2fnas_auto.errors import InputError
from c2fnas_auto.planning.fingerprint import case_seed
from c2fnas_auto.planning.parallel import parallel_map
from c2fnas_auto.preprocessing.cropping import crop_to_nonzero
from c2fnas_auto.preprocessing.normalization import normalize
from c2fnas_auto.preprocessing.resampling import compute_new_shape, resample_to_shape
from c2fnas_auto.preprocessing.storage import case_paths, data_dir, is_case_finished
from c2fnas_auto.utils.io import (atomic_save_npy, atomic_write_json, atomic_write_text, load_json,
                                  remove_stale_temporaries)

MAX_LOCATIONS_PER_CLASS = 10000
SETTINGS_FILE = "preprocessing_settings.json"


def _transpose(array: np.ndarray, forward: Sequence[int]) -> np.ndarray:
    """Permute the three spatial axes of a (C, z, y, x) array."""
    return np.ascontiguousarray(array.transpose([0] + [int(a) + 1 for a in forward]))


def sample_class_locations(seg: np.ndarray, num_classes: int, seed: int,
                           max_per_class: int = MAX_LOCATIONS_PER_CLASS) -> dict[str, list[list[int]]]:
    """Up to `max_per_class` random (z, y, x) voxels per foreground class, for oversampling."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[list[int]]] = {}
    for label in range(1, num_classes):
        coords = np.argwhere(seg == label)
        if len(coords) > max_per_class:
            coords = coords[np.sort(rng.choice(len(coords), max_per_class, replace=False))]
        out[str(label)] = coords.astype(int).tolist()
    return out


def preprocess_case(image_files: Sequence[str | Path], plans, label_file: str | Path | None = None,
                    case_id: str | None = None, image: tuple[np.ndarray, Any] | None = None
                    ) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """(data float32 (C, z, y, x), seg int8 (1, z, y, x) or None, properties) in preprocessed space.

    `image` = (array (C, z, y, x), Geometry) already in memory (`Predictor.predict_array`); then
    `image_files` only names the case in messages."""
    from c2fnas_auto.data.image_io import read_image, read_segmentation, strip_ending

    image_files = [Path(f) for f in image_files]
    case_id = case_id or strip_ending(image_files[0]).removesuffix("_0000")
    data, geometry = image if image is not None else read_image(image_files)
    if data.shape[0] != plans.num_channels:
        raise InputError(f"{image_files[0]}: {data.shape[0]} channel(s), the plans expect {plans.num_channels}")
    seg = None
    if label_file is not None:
        seg3, _ = read_segmentation(label_file)
        if seg3.shape != data.shape[1:]:
            raise InputError(f"{label_file}: label shape {seg3.shape} differs from image shape {data.shape[1:]}")
        seg = seg3[None]
    shape_original = [int(n) for n in data.shape[1:]]
    spacing_original = [float(s) for s in geometry.spacing_zyx]

    data, seg, bbox, mask = crop_to_nonzero(data, seg)
    shape_after_crop = [int(n) for n in data.shape[1:]]
    forward = list(plans.transpose_forward)
    data = _transpose(data, forward)
    seg = _transpose(seg, forward) if seg is not None else None
    spacing_t = [spacing_original[a] for a in forward]
    new_shape = compute_new_shape(data.shape[1:], spacing_t, plans.target_spacing)

    data = resample_to_shape(data, new_shape, False, plans.resampling, low_res_axis=0)
    if seg is not None:
        seg = resample_to_shape(seg, new_shape, True, plans.resampling, low_res_axis=0)
    needs_mask = any(n.get("use_nonzero_mask") for n in plans.normalization)
    mask_r = None
    if needs_mask:
        mask_t = _transpose(mask[None].astype(np.int8), forward)
        mask_r = resample_to_shape(mask_t, new_shape, True, plans.resampling, low_res_axis=0)[0] > 0
    data = normalize(data, plans.normalization, mask_r)

    properties = {
        "case_id": case_id,
        "sitk_spacing": list(geometry.spacing),
        "sitk_origin": list(geometry.origin),
        "sitk_direction": list(geometry.direction),
        "shape_original": shape_original,
        "spacing_original": spacing_original,
        "crop_bbox": bbox,
        "shape_after_crop": shape_after_crop,
        "shape_after_resampling": [int(n) for n in data.shape[1:]],
        "spacing_after_resampling": [float(s) for s in plans.target_spacing],
        "has_segmentation": seg is not None,
        "class_locations": (sample_class_locations(seg[0], plans.num_classes, case_seed(case_id))
                            if seg is not None else {}),
    }
    return data.astype(np.float32, copy=False), seg, properties


def _relevant_settings(plans) -> dict[str, Any]:
    """The plans fields that determine the preprocessed arrays (others may change freely)."""
    return {"target_spacing": list(plans.target_spacing), "transpose_forward": list(plans.transpose_forward),
            "normalization": plans.normalization, "resampling": plans.resampling,
            "channel_names": {str(k): v for k, v in plans.channel_names.items()},
            "labels": dict(plans.labels)}


def _preprocess_and_save(job: tuple) -> str:
    case, plans, folder = job
    data, seg, props = preprocess_case(case.image_files, plans, case.label_file, case_id=case.case_id)
    npy, seg_path, props_path = case_paths(folder, case.case_id)
    atomic_save_npy(npy, data)
    if seg is not None:
        atomic_save_npy(seg_path, seg)
    # compact JSON: class_locations hold tens of thousands of coordinates (pretty-printing them
    # took longer than the preprocessing itself); written last, it marks the case finished
    atomic_write_text(props_path, json.dumps(props, separators=(",", ":")) + "\n")
    return case.case_id


def preprocess_dataset(task_name: str, plans, num_workers: int = 1, dataset=None,
                       preprocessed_dir: str | Path | None = None, progress: bool | None = None) -> dict[str, int]:
    """Preprocess every training case not yet finished; returns counts processed / skipped."""
    if dataset is None:
        from c2fnas_auto.data.dataset import load_dataset
        from c2fnas_auto.paths import resolve_task

        dataset = load_dataset(resolve_task(task_name))
    if preprocessed_dir is None:
        from c2fnas_auto.paths import preprocessed_dir as _pre

        preprocessed_dir = _pre(task_name)
    folder = data_dir(preprocessed_dir)
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(folder)

    settings_path = folder / SETTINGS_FILE
    settings = _relevant_settings(plans)
    previous = None
    if settings_path.is_file():
        try:
            previous = load_json(settings_path)
        except InputError:
            previous = None
    if previous != _jsonable_roundtrip(settings):
        for case in dataset.training:  # stale arrays: unmark, then redo
            case_paths(folder, case.case_id)[2].unlink(missing_ok=True)
        atomic_write_json(settings_path, settings)

    todo = [c for c in dataset.training if not is_case_finished(folder, c.case_id)]
    parallel_map(_preprocess_and_save, [(c, plans, folder) for c in todo], num_workers,
                 desc="preprocess", progress=progress)
    return {"processed": len(todo), "skipped": len(dataset.training) - len(todo)}


def _jsonable_roundtrip(obj: Any) -> Any:
    """What `obj` looks like after a JSON write + read (tuples become lists, keys strings)."""
    return json.loads(json.dumps(obj))
