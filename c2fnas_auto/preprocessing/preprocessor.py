"""Preprocess one case or a whole task: crop -> transpose -> resample -> normalize.

`preprocess_case` is the one code path for training data and prediction inputs, so
both see exactly the same transform. `preprocess_dataset` runs it over a task's
training cases in parallel, skipping finished ones, and redoes everything when the
preprocessing-relevant part of the plans changed since the last run. Each case's marker
(its properties file) records its source files' size and mtime and the identity of those
plans settings, so a replaced image or label, or changed plans, means the case is redone.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from c2fnas_auto.data.dataset import load_dataset
from c2fnas_auto.data.image_io import read_image, read_segmentation, strip_ending
from c2fnas_auto.data.sources import case_sources
from c2fnas_auto.errors import InputError
from c2fnas_auto.paths import preprocessed_dir as task_preprocessed_dir
from c2fnas_auto.paths import resolve_task
from c2fnas_auto.preprocessing.cropping import crop_to_nonzero
from c2fnas_auto.preprocessing.normalization import normalize
from c2fnas_auto.preprocessing.resample_bound import check_case_grid, check_case_header
from c2fnas_auto.preprocessing.resampling import compute_new_shape, resample_to_shape, separate_axis
from c2fnas_auto.preprocessing.storage import (
    CASES_FILE,
    case_paths,
    data_dir,
    is_case_finished,
    list_cases,
    read_properties,
)
from c2fnas_auto.utils.io import (
    atomic_save_npy,
    atomic_write_json,
    atomic_write_text,
    load_json,
    remove_stale_temporaries,
)
from c2fnas_auto.utils.parallel import parallel_map
from c2fnas_auto.utils.seeds import case_seed

log = logging.getLogger(__name__)

MAX_LOCATIONS_PER_CLASS = 10000
SETTINGS_FILE = "preprocessing_settings.json"
# Bumped when the code computes different arrays from the same plans (2: per-case
# separate-axis resampling), so arrays made by older code are redone, never reused.
PREPROCESSING_VERSION = 2


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
    `image_files` only names the case in messages.

    One function: crop, transpose, resample and normalize run in this order on the same arrays, as in
    nnU-Net."""
    image_files = [Path(f) for f in image_files]
    case_id = case_id or strip_ending(image_files[0]).removesuffix("_0000")
    if image is None:
        check_case_header(image_files, plans)  # the header decides before any voxel is read
    data, geometry = image if image is not None else read_image(image_files)
    check_case_grid(data.shape[1:], geometry.spacing_zyx, data.shape[0], plans, str(image_files[0]))
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
    axis = separate_axis(spacing_t, plans.target_spacing, float(plans.resampling.get("anisotropy_threshold", 3.0)))

    data = resample_to_shape(data, new_shape, False, plans.resampling, low_res_axis=axis)
    if seg is not None:
        seg = resample_to_shape(seg, new_shape, True, plans.resampling, low_res_axis=axis)
    needs_mask = any(n.get("use_nonzero_mask") for n in plans.normalization)
    mask_r = None
    if needs_mask:
        mask_t = _transpose(mask[None].astype(np.int8), forward)
        mask_r = resample_to_shape(mask_t, new_shape, True, plans.resampling, low_res_axis=axis)[0] > 0
    data = normalize(data, plans.normalization, mask_r)

    properties = {
        "case_id": case_id,
        "sitk_spacing": list(geometry.spacing),
        "sitk_origin": list(geometry.origin),
        "sitk_direction": list(geometry.direction),
        # a skewed NIfTI input's own affine (data.image_io.Geometry.original_affine): export
        # writes the prediction with it; None for ordinary inputs
        "nifti_affine": None if geometry.original_affine is None else list(geometry.original_affine),
        "shape_original": shape_original,
        "spacing_original": spacing_original,
        "crop_bbox": bbox,
        "shape_after_crop": shape_after_crop,
        "shape_after_resampling": [int(n) for n in data.shape[1:]],
        "spacing_after_resampling": [float(s) for s in plans.target_spacing],
        # preprocessed order; None = all axes together. Export goes back the same way.
        "resampling_low_res_axis": axis,
        "has_segmentation": seg is not None,
        "class_locations": (sample_class_locations(seg[0], plans.num_classes, case_seed(case_id))
                            if seg is not None else {}),
    }
    return data.astype(np.float32, copy=False), seg, properties


def relevant_settings(plans) -> dict[str, Any]:
    """The plans fields that determine the preprocessed arrays (others may change freely)."""
    return {"preprocessing_version": PREPROCESSING_VERSION, "target_spacing": list(plans.target_spacing),
            "transpose_forward": list(plans.transpose_forward),
            "normalization": plans.normalization, "resampling": plans.resampling,
            "channel_names": {str(k): v for k, v in plans.channel_names.items()},
            "labels": dict(plans.labels)}


def settings_identity(settings: dict[str, Any]) -> str:
    """A short hash of the preprocessing-relevant plans settings, kept in every case marker."""
    text = json.dumps(_jsonable_roundtrip(settings), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _up_to_date(folder: Path, case_id: str, sources: dict, identity: str) -> bool:
    """Finished, made from these exact source files and under these plans settings."""
    if not is_case_finished(folder, case_id):
        return False
    props = read_properties(case_paths(folder, case_id)[2]) or {}
    return props.get("sources") == sources and props.get("settings_identity") == identity


def _preprocess_and_save(job: tuple) -> str:
    case, plans, folder, sources, identity = job
    data, seg, props = preprocess_case(case.image_files, plans, case.label_file, case_id=case.case_id)
    props["sources"], props["settings_identity"] = sources, identity
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
        dataset = load_dataset(resolve_task(task_name))
    if preprocessed_dir is None:
        preprocessed_dir = task_preprocessed_dir(task_name)
    folder = data_dir(preprocessed_dir)
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(folder)

    settings_path = folder / SETTINGS_FILE
    settings = relevant_settings(plans)
    previous = _read_json_or_none(settings_path)
    own = {c.case_id for c in dataset.training}
    for case_id in set(list_cases(folder)) - own:  # removed from dataset.json: never listed, trained or split
        for path in case_paths(folder, case_id):
            path.unlink(missing_ok=True)
    if previous != _jsonable_roundtrip(settings):
        for case_id in own:  # stale arrays: unmark, then redo
            case_paths(folder, case_id)[2].unlink(missing_ok=True)
        atomic_write_json(settings_path, settings)
    manifest = {"training": [c.case_id for c in dataset.training]}
    if _read_json_or_none(folder / CASES_FILE) != manifest:
        atomic_write_json(folder / CASES_FILE, manifest)

    identity = settings_identity(settings)
    sources = {c.case_id: case_sources(c, dataset.folder) for c in dataset.training}
    todo = [c for c in dataset.training if not _up_to_date(folder, c.case_id, sources[c.case_id], identity)]
    stale = [c.case_id for c in todo if is_case_finished(folder, c.case_id)]
    if stale:
        log.warning("%s: %d preprocessed case(s) no longer match their source files or the plans, redoing them: %s",
                    folder, len(stale), ", ".join(stale[:5]) + (", ..." if len(stale) > 5 else ""))
    parallel_map(_preprocess_and_save, [(c, plans, folder, sources[c.case_id], identity) for c in todo],
                 num_workers, desc="preprocess", progress=progress)
    return {"processed": len(todo), "skipped": len(dataset.training) - len(todo)}


def _read_json_or_none(path: Path) -> Any:
    """The file's JSON, or None when it is missing or unreadable (then it is rewritten)."""
    if not path.is_file():
        return None
    try:
        return load_json(path)
    except InputError:
        return None


def _jsonable_roundtrip(obj: Any) -> Any:
    """What `obj` looks like after a JSON write + read (tuples become lists, keys strings)."""
    return json.loads(json.dumps(obj))
