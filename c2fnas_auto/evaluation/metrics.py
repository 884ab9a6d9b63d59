"""Segmentation metrics as the Medical Segmentation Decathlon reports them.

Rules for empty masks (documented in documentation/howto/inference.md):
- reference and prediction both empty for a label -> Dice and NSD are NaN (nothing to
  score); callers exclude NaN from means and keep `n_ref = 0` in the per-case record.
- exactly one of them empty -> Dice 0 and NSD 0 (a pure miss or a pure false alarm).

Spacing is in numpy order (z, y, x), in millimetres.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage


@dataclass
class Confusion:
    """Voxel counts for one label."""

    tp: int
    fp: int
    fn: int
    n_ref: int
    n_pred: int


def confusion(pred: np.ndarray, ref: np.ndarray, label: int) -> Confusion:
    p = pred == label
    r = ref == label
    tp = int(np.count_nonzero(p & r))
    n_pred = int(np.count_nonzero(p))
    n_ref = int(np.count_nonzero(r))
    return Confusion(tp=tp, fp=n_pred - tp, fn=n_ref - tp, n_ref=n_ref, n_pred=n_pred)


def dice_from_confusion(c: Confusion) -> float:
    denom = 2 * c.tp + c.fp + c.fn
    return float("nan") if denom == 0 else 2.0 * c.tp / denom


def dice(pred: np.ndarray, ref: np.ndarray, label: int) -> float:
    """Dice of one label; NaN when the label is absent from both masks."""
    if pred.shape != ref.shape:
        raise ValueError(f"shape mismatch: prediction {pred.shape} vs reference {ref.shape}")
    return dice_from_confusion(confusion(pred, ref, label))


def _surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of the mask with a 6-neighbour outside it (the image border counts as outside)."""
    eroded = ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(mask.ndim, 1),
                                    border_value=0)
    return mask & ~eroded


def _crop_to_union(a: np.ndarray, b: np.ndarray, margin: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Crop both masks to their joint bounding box plus a margin.

    Distance transforms then run on the small box only; distances between the two surfaces
    are unchanged because every surface voxel lies inside the box.
    """
    union = a | b
    coords = np.nonzero(union)
    slices = []
    for axis, m in enumerate(margin):
        lo = max(int(coords[axis].min()) - m, 0)
        hi = min(int(coords[axis].max()) + m + 1, union.shape[axis])
        slices.append(slice(lo, hi))
    sl = tuple(slices)
    return a[sl], b[sl]


def normalized_surface_dice(pred: np.ndarray, ref: np.ndarray, label: int,
                            spacing: Sequence[float], tolerance_mm: float) -> float:
    """Normalized surface Dice (Nikolov et al. 2018) with voxel surfaces.

    The fraction of both surfaces that lies within `tolerance_mm` of the other surface:
    (|S_p within tol of S_r| + |S_r within tol of S_p|) / (|S_p| + |S_r|), distances
    measured with the voxel spacing by Euclidean distance transforms.
    """
    if pred.shape != ref.shape:
        raise ValueError(f"shape mismatch: prediction {pred.shape} vs reference {ref.shape}")
    p = pred == label
    r = ref == label
    has_p, has_r = bool(p.any()), bool(r.any())
    if not has_p and not has_r:
        return float("nan")
    if not has_p or not has_r:
        return 0.0
    p, r = _crop_to_union(p, r, margin=[1] * p.ndim)
    sp, sr = _surface(p), _surface(r)
    spacing = tuple(float(s) for s in spacing)
    # distance of every voxel to the nearest surface voxel of the other mask
    dist_to_r = ndimage.distance_transform_edt(~sr, sampling=spacing)
    dist_to_p = ndimage.distance_transform_edt(~sp, sampling=spacing)
    ok_p = np.count_nonzero(dist_to_r[sp] <= tolerance_mm)
    ok_r = np.count_nonzero(dist_to_p[sr] <= tolerance_mm)
    total = np.count_nonzero(sp) + np.count_nonzero(sr)
    return float((ok_p + ok_r) / total)
