"""Bring preprocessed-space probabilities back to the input image and write the labels.

Undoes preprocessing in reverse order: resample to the cropped shape (still transposed),
transpose back, put the crop into the original grid (outside it: background with
probability 1), argmax, optional largest-component postprocessing, and write with the
input's own spacing, origin and direction from the case properties.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from c2fnas_auto.data.image_io import IMAGE_ENDINGS, Geometry, write_segmentation
from c2fnas_auto.inference.postprocessing import apply_postprocessing
from c2fnas_auto.preprocessing.resampling import case_low_res_axis, resample_to_shape
from c2fnas_auto.utils.io import atomic_path, atomic_write_json

PROBABILITY_ORDER = 1  # linear: no overshoot of probabilities, cheaper than cubic


def probabilities_to_original(probabilities: np.ndarray | torch.Tensor, properties: dict, plans: Any) -> np.ndarray:
    """(K, z, y, x) preprocessed-space probabilities -> (K, *shape_original) float32."""
    if isinstance(probabilities, torch.Tensor):
        probabilities = probabilities.detach().to("cpu", torch.float32).numpy()
    probs = np.asarray(probabilities, dtype=np.float32)
    fwd = [int(a) for a in plans.transpose_forward]
    bwd = [int(a) for a in plans.transpose_backward]
    crop_shape = [int(s) for s in properties["shape_after_crop"]]
    target = [crop_shape[a] for a in fwd]  # cropped shape in preprocessed (transposed) order
    if list(probs.shape[1:]) != target:
        probs = np.asarray(resample_to_shape(probs, target, False, plans.resampling,
                                             case_low_res_axis(properties, plans.resampling),
                                             order=PROBABILITY_ORDER), dtype=np.float32)
    probs = probs.transpose([0] + [a + 1 for a in bwd])
    shape_original = [int(s) for s in properties["shape_original"]]
    bbox = properties["crop_bbox"]
    full = np.zeros((probs.shape[0], *shape_original), dtype=np.float32)
    full[0] = 1.0
    sl = tuple(slice(int(lo), int(hi)) for lo, hi in bbox)
    full[(slice(None), *sl)] = probs
    return full


def geometry_from_properties(properties: dict):
    return Geometry.from_dict({"spacing": properties["sitk_spacing"], "origin": properties["sitk_origin"],
                               "direction": properties["sitk_direction"],
                               "original_affine": properties.get("nifti_affine")})


def labels_from_probabilities(probabilities: np.ndarray, postprocessing: dict | None = None) -> np.ndarray:
    """Argmax over the class axis of (K, z, y, x) probabilities, then the postprocessing decision."""
    seg = np.argmax(probabilities, axis=0).astype(np.uint8 if probabilities.shape[0] <= 256 else np.int16)
    return apply_postprocessing(seg, postprocessing)


def export_prediction(probabilities: np.ndarray | torch.Tensor, properties: dict, plans: Any,
                      out_file: str | os.PathLike, save_probabilities: bool = False,
                      postprocessing: dict | None = None) -> np.ndarray:
    """Write the segmentation of one case in its original geometry; returns the label array.

    With `save_probabilities`, `<case>.npz` (key `probabilities`, original space, float32)
    and `<case>.json` (the case properties) are written next to the segmentation.
    """
    full = probabilities_to_original(probabilities, properties, plans)
    seg = labels_from_probabilities(full, postprocessing)
    out_file = Path(out_file)
    write_segmentation(seg, geometry_from_properties(properties), out_file)
    if save_probabilities:
        npz, props = probability_files(out_file)
        with atomic_path(npz, suffix=".npz") as tmp:
            np.savez_compressed(tmp, probabilities=full)
        atomic_write_json(props, properties)
    return seg


def probability_files(out_file: Path) -> tuple[Path, Path]:
    """(`<case>.npz`, `<case>.json`) written next to the segmentation `out_file` with probabilities."""
    stem = _strip_image_ending(Path(out_file))
    return Path(out_file).parent / f"{stem}.npz", Path(out_file).parent / f"{stem}.json"


def _strip_image_ending(path: Path) -> str:
    name = path.name

    for ending in IMAGE_ENDINGS:
        if name.endswith(ending):
            return name[: -len(ending)]
    return path.stem
