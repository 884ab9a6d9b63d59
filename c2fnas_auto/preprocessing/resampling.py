"""Resampling between spacings (nnU-Net's scheme), used by preprocessing and by export.

Images use a cubic spline. Segmentations are resampled one label at a time as a
soft one-hot map with linear interpolation, and each voxel takes the label with the
highest value: unlike nearest neighbour this keeps boundaries smooth, and unlike
cubic it cannot invent labels. When a `low_res_axis` is given, the in-plane axes are
interpolated with the configured order and the low-resolution axis with
`out_of_plane_order` (nearest by default), because interpolating across thick slices
smears structures. Whether to do so is decided per case (`separate_axis`), from the
case's own spacing and the target spacing: one dataset can mix thin- and thick-slice
cases (MSD Liver: 0.7 to 5 mm), so a dataset-wide decision would be wrong for some.

Export passes soft probabilities with `is_seg=False`; pass `order=1` for them so
the values stay in [0, 1] (a cubic spline can overshoot). Any order is correct for
the argmax, linear is the documented choice.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from skimage.transform import resize


def compute_new_shape(shape: Sequence[int], spacing: Sequence[float], new_spacing: Sequence[float]) -> list[int]:
    """Shape after resampling `shape` from `spacing` to `new_spacing` (each axis at least 1)."""
    return [max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, new_spacing)]


def separate_axis(spacing: Sequence[float], target_spacing: Sequence[float],
                  threshold: float = 3.0) -> int | None:
    """The axis to resample on its own for one case, or None for plain 3D resampling.

    The case's own spacing decides first: if its largest/smallest spacing exceeds
    `threshold`, its coarsest axis. Otherwise the target spacing, the same way (an
    isotropic case going to a thick-slice grid). An axis tie (two equally coarse axes)
    means no single through-plane axis: None.
    """
    for sp in (spacing, target_spacing):
        sp = [float(v) for v in sp]
        if max(sp) / min(sp) > threshold:
            coarse = [a for a, v in enumerate(sp) if v == max(sp)]
            return coarse[0] if len(coarse) == 1 else None
    return None


def case_low_res_axis(properties: dict[str, Any], settings: dict[str, Any]) -> int | None:
    """The separate axis a preprocessed case was resampled with (preprocessed order), so
    export goes back the same way. Cases preprocessed before the per-case decision carry
    no record: for them, the old dataset-wide rule (axis 0 when the plans say anisotropic)."""
    if "resampling_low_res_axis" in properties:
        axis = properties["resampling_low_res_axis"]
        return None if axis is None else int(axis)
    return 0 if settings.get("anisotropic") else None


def _resize(volume: np.ndarray, new_shape: Sequence[int], order: int) -> np.ndarray:
    return resize(volume, tuple(new_shape), order=order, mode="edge", anti_aliasing=False,
                  preserve_range=True, clip=False).astype(np.float32, copy=False)


def _resize_volume(volume: np.ndarray, new_shape: Sequence[int], order: int,
                   low_res_axis: int | None, out_of_plane_order: int) -> np.ndarray:
    """Resize one float (z, y, x) volume; separable in-plane / out-of-plane when low_res_axis is set."""
    new_shape = tuple(int(n) for n in new_shape)
    if volume.shape == new_shape:
        return volume.astype(np.float32, copy=True)
    if low_res_axis is None or order == out_of_plane_order:
        return _resize(volume, new_shape, order)
    # Step 1: in-plane only, slice by slice (a 3D spline would also mix neighbouring slices).
    inplane = list(new_shape)
    inplane[low_res_axis] = volume.shape[low_res_axis]
    if tuple(inplane) != volume.shape:
        moved = np.moveaxis(volume, low_res_axis, 0)
        plane = [n for a, n in enumerate(new_shape) if a != low_res_axis]
        out = np.moveaxis(np.stack([_resize(s, plane, order) for s in moved]), 0, low_res_axis)
    else:
        out = volume.astype(np.float32)
    # Step 2: along the low-res axis only, with its own order.
    if out.shape != new_shape:
        out = _resize(out, new_shape, out_of_plane_order)
    return out


def resample_to_shape(array: np.ndarray, new_shape: Sequence[int], is_seg: bool, settings: dict[str, Any],
                      low_res_axis: int | None = None, order: int | None = None) -> np.ndarray:
    """Resample (C, z, y, x) `array` to spatial `new_shape`.

    `settings` is `plans.resampling`; `low_res_axis` (the array's through-plane axis for
    this case, from `separate_axis` / `case_low_res_axis`) switches to separable
    resampling; None resamples all axes together. `order` overrides the spline order
    for this call (images only).
    Images come back float32, segmentations with the smallest signed integer type.
    """
    if array.ndim != 4:
        raise ValueError(f"resample_to_shape expects (C, z, y, x), got shape {array.shape}")
    aniso_axis = low_res_axis
    oop = int(settings.get("out_of_plane_order", 0))
    if is_seg:
        return np.stack([_resample_labels(a, new_shape, int(settings.get("seg_order", 1)), aniso_axis, oop)
                         for a in array])
    img_order = int(settings.get("image_order", 3)) if order is None else int(order)
    return np.stack([_resize_volume(a.astype(np.float32, copy=False), new_shape, img_order, aniso_axis, oop)
                     for a in array])


def _resample_labels(seg: np.ndarray, new_shape: Sequence[int], order: int,
                     low_res_axis: int | None, out_of_plane_order: int) -> np.ndarray:
    """Per-label soft resampling; each voxel takes the label whose interpolated indicator is largest."""
    dtype = np.int8 if seg.size == 0 or (seg.max() < 128 and seg.min() >= -128) else np.int16
    if tuple(seg.shape) == tuple(new_shape):
        return seg.astype(dtype, copy=True)
    labels = np.unique(seg)
    if len(labels) == 1:
        return np.full(tuple(new_shape), labels[0], dtype=dtype)
    out = np.zeros(tuple(new_shape), dtype=dtype)
    best = np.full(tuple(new_shape), -np.inf, dtype=np.float32)
    for label in labels:
        soft = _resize_volume((seg == label).astype(np.float32), new_shape, order, low_res_axis, out_of_plane_order)
        better = soft > best
        out[better] = label
        best[better] = soft[better]
    return out
