"""Dataset fingerprint: the measurements the planner decides from.

Per case: spacing and shape before/after cropping to the nonzero region, and the size
and mtime of the source files it was measured from (data/sources.py), so a replaced image
or label is noticed and the fingerprint recomputed. Per channel: intensity statistics of
foreground voxels (label > 0), computed from a fixed-seed sample per case so the
fingerprint is reproducible and the memory stays bounded on large datasets. Saved as
`fingerprint.json` in the preprocessed folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from c2fnas_auto.data.image_io import read_image, read_segmentation
from c2fnas_auto.data.sources import case_sources
from c2fnas_auto.preprocessing.cropping import bbox_of_mask, nonzero_mask
from c2fnas_auto.utils.parallel import parallel_map
from c2fnas_auto.utils.seeds import case_seed

FINGERPRINT_VERSION = 1
SAMPLES_PER_CASE = 10000


def fingerprint_case(case) -> dict[str, Any]:
    """Measure one training case (a data.dataset.Case); foreground samples come back as lists."""
    data, geometry = read_image(case.image_files)
    seg = read_segmentation(case.label_file)[0] if case.label_file is not None else None
    mask = nonzero_mask(data)
    bbox = bbox_of_mask(mask)
    shape_after = [b - a for a, b in bbox]
    foreground = seg > 0 if seg is not None and (seg > 0).any() else mask
    if not foreground.any():
        foreground = np.ones(data.shape[1:], dtype=bool)
    rng = np.random.default_rng(case_seed(case.case_id))
    channels = []
    for c in range(data.shape[0]):
        values = data[c][foreground]
        take = min(SAMPLES_PER_CASE, values.size)
        sample = rng.choice(values, size=take, replace=False) if take < values.size else values
        channels.append({"samples": sample.astype(np.float32), "min": float(values.min()),
                         "max": float(values.max())})
    shape_before = list(data.shape[1:])
    return {
        "case_id": case.case_id,
        "spacing": [float(s) for s in geometry.spacing_zyx],
        "shape_before_crop": shape_before,
        "shape_after_crop": shape_after,
        "relative_size_after_crop": float(np.prod(shape_after) / np.prod(shape_before)),
        "channels": channels,
    }


def intensity_statistics(samples: np.ndarray, vmin: float, vmax: float) -> dict[str, float]:
    """Summary of one channel's foreground sample (min/max are over all foreground voxels)."""
    if samples.size == 0:
        return {"mean": 0.0, "std": 1.0, "median": 0.0, "min": 0.0, "max": 0.0,
                "percentile_00_5": 0.0, "percentile_99_5": 0.0, "num_samples": 0}
    return {
        "mean": float(samples.mean()),
        "std": float(samples.std()),
        "median": float(np.median(samples)),
        "min": float(vmin),
        "max": float(vmax),
        "percentile_00_5": float(np.percentile(samples, 0.5)),
        "percentile_99_5": float(np.percentile(samples, 99.5)),
        "num_samples": int(samples.size),
    }


def compute_fingerprint(dataset, num_workers: int = 1, progress: bool | None = None) -> dict[str, Any]:
    """Fingerprint of the training cases of a data.dataset.Dataset (JSON-ready dict)."""
    sources = [case_sources(c, dataset.folder) for c in dataset.training]  # before reading: a later change shows
    per_case = parallel_map(fingerprint_case, dataset.training, num_workers, desc="fingerprint", progress=progress)
    num_channels = len(dataset.channel_names)
    stats = {}
    for c in range(num_channels):
        samples = np.concatenate([r["channels"][c]["samples"] for r in per_case])
        stats[str(c)] = intensity_statistics(samples, min(r["channels"][c]["min"] for r in per_case),
                                             max(r["channels"][c]["max"] for r in per_case))
    cases = [{**{k: v for k, v in r.items() if k != "channels"}, "sources": src} for r, src in zip(per_case, sources)]
    return {
        "fingerprint_version": FINGERPRINT_VERSION,
        "task_name": Path(dataset.folder).name,
        "channel_names": {str(k): v for k, v in dataset.channel_names.items()},
        "labels": dict(dataset.labels),
        "num_training_cases": len(cases),
        "cases": cases,
        "spacings": [r["spacing"] for r in cases],
        "shapes_after_crop": [r["shape_after_crop"] for r in cases],
        "median_relative_size_after_crop": float(np.median([r["relative_size_after_crop"] for r in cases])),
        "foreground_intensity_statistics": stats,
    }


def synthetic_fingerprint(task_name: str, channel_names: dict[int, str], labels: dict[str, int],
                          spacings: list[list[float]], shapes: list[list[int]],
                          intensity: dict[int, dict[str, float]] | None = None,
                          relative_size_after_crop: float = 1.0) -> dict[str, Any]:
    """A fingerprint built from published statistics instead of images (MSD table, tests)."""
    default = {"mean": 0.0, "std": 1.0, "median": 0.0, "min": -3.0, "max": 3.0,
               "percentile_00_5": -2.5, "percentile_99_5": 2.5, "num_samples": 0}
    stats = {str(c): dict((intensity or {}).get(c, default)) for c in channel_names}
    cases = [{"case_id": f"case_{i:03d}", "spacing": list(map(float, sp)), "shape_before_crop": list(sh),
              "shape_after_crop": list(sh), "relative_size_after_crop": relative_size_after_crop}
             for i, (sp, sh) in enumerate(zip(spacings, shapes))]
    return {
        "fingerprint_version": FINGERPRINT_VERSION,
        "task_name": task_name,
        "channel_names": {str(k): v for k, v in channel_names.items()},
        "labels": dict(labels),
        "num_training_cases": len(cases),
        "cases": cases,
        "spacings": [c["spacing"] for c in cases],
        "shapes_after_crop": [c["shape_after_crop"] for c in cases],
        "median_relative_size_after_crop": relative_size_after_crop,
        "foreground_intensity_statistics": stats,
    }
