"""Intensity normalization per channel, as the plans say (nnU-Net's schemes).

CT intensities are physical (HU), so every case gets the same dataset-wide
transform: clip to the foreground 0.5/99.5 percentiles, then subtract the
foreground mean and divide by the foreground std. Other modalities have arbitrary
scales per scan, so each image is z-scored on its own, inside the nonzero mask when
cropping showed a large zero background (then the background stays 0).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from c2fnas_auto.errors import PlansError

_EPS = 1e-8


def normalize_channel(channel: np.ndarray, scheme: dict[str, Any], mask: np.ndarray | None = None) -> np.ndarray:
    """Return a float32 normalized copy of one (z, y, x) channel."""
    x = channel.astype(np.float32, copy=True)
    kind = scheme.get("scheme")
    if kind == "CT":
        np.clip(x, scheme["lower"], scheme["upper"], out=x)
        x -= np.float32(scheme["mean"])
        x /= np.float32(max(float(scheme["std"]), _EPS))
        return x
    if kind == "zscore":
        use_mask = bool(scheme.get("use_nonzero_mask")) and mask is not None and mask.any()
        values = x[mask] if use_mask else x
        mean, std = float(values.mean()), float(values.std())
        x -= np.float32(mean)
        x /= np.float32(max(std, _EPS))
        if use_mask:
            x[~mask] = 0
        return x
    raise PlansError(f"unknown normalization scheme {kind!r} (expected CT or zscore)")


def normalize(data: np.ndarray, schemes: list[dict[str, Any]], mask: np.ndarray | None = None) -> np.ndarray:
    """Normalize (C, z, y, x) data with one scheme per channel; `mask` is the nonzero mask (z, y, x)."""
    if len(schemes) != data.shape[0]:
        raise PlansError(f"plans normalize {len(schemes)} channel(s) but the image has {data.shape[0]}")
    return np.stack([normalize_channel(data[c], schemes[c], mask) for c in range(data.shape[0])])
