"""Crop a case to the bounding box of its nonzero voxels.

Background outside the body (air padding, zero-filled MR borders) carries no
information and only costs memory and time; removing it is the first step for
training data and prediction inputs alike. Boxes are half-open `[start, stop)` per
axis in numpy order.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import binary_fill_holes


def nonzero_mask(data: np.ndarray) -> np.ndarray:
    """Voxels that are nonzero in any channel, with enclosed holes filled (data is (C, z, y, x))."""
    mask = np.any(data != 0, axis=0)
    return binary_fill_holes(mask)


def bbox_of_mask(mask: np.ndarray) -> list[list[int]]:
    """Half-open bounding box of the True voxels; the whole array when the mask is empty."""
    if not mask.any():
        return [[0, int(n)] for n in mask.shape]
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(np.any(mask, axis=other))
        box.append([int(hits[0]), int(hits[-1]) + 1])
    return box


def crop_to_bbox(array: np.ndarray, bbox: list[list[int]]) -> np.ndarray:
    """Crop the last len(bbox) axes of `array` (leading channel axes are kept)."""
    lead = (slice(None),) * (array.ndim - len(bbox))
    return array[lead + tuple(slice(a, b) for a, b in bbox)]


def crop_to_nonzero(data: np.ndarray, seg: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray | None, list[list[int]], np.ndarray]:
    """Crop (C, z, y, x) data and optional (z, y, x) or (1, z, y, x) seg; also return box and cropped mask."""
    mask = nonzero_mask(data)
    bbox = bbox_of_mask(mask)
    data_c = crop_to_bbox(data, bbox)
    seg_c = crop_to_bbox(seg, bbox) if seg is not None else None
    return data_c, seg_c, bbox, crop_to_bbox(mask, bbox)
