"""Experiment planner: fingerprint -> Plans (nnU-Net's rules, documentation/reference/plans.md).

Decisions, in order: target spacing (median, 10th percentile on the coarse axis of
anisotropic data), transposition (coarse axis first), normalization per channel,
resampling settings, network widths from `base_channels`, then patch size, per-level
strides and batch size fitted with the search space's cost model so the estimated
training memory stays within `gpu_memory_gb`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from c2fnas_auto.errors import PlansError
from c2fnas_auto.nas.config import CELL_STYLES, NetworkConfig
from c2fnas_auto.nas.cost import estimate_cost
from c2fnas_auto.nas.genotype import reference_genotype
from c2fnas_auto.paths import DEFAULT_PLANS_NAME
from c2fnas_auto.planning.plans import Plans, default_resampling

ANISOTROPY_THRESHOLD = 3.0
NUM_LEVELS = 4
MIN_FEATURE_SIZE = 4          # an axis is not downsampled below this many voxels
MIN_PATCH_AXIS = 8            # the patch is never shrunk below this on any axis
MAX_START_VOXELS = 256 ** 3   # initial patch volume before fitting (then clipped to the median shape)
BATCH_DATASET_FRACTION = 0.05  # nnU-Net's cap: one batch covers at most 5% of the dataset's voxels
MAX_LEVEL_CHANNELS = 512
AUTO_BASE_CHANNELS = (32, 16, 8)  # the paper's stem width, halved while it crowds the patch out
GIB = 1024 ** 3
STATE_SHARE_NOTE = 0.5         # warn when weights, gradients and momentum take more of the target than this
COVER_NOTE = 0.25              # ... and the patch covers less of the median case than this (nnU-Net's
                               # 0.25 GB hippocampus patch covers 29%, ours 9%)

CostFn = Callable[..., Any]


# ----------------------------------------------------------------- spacing + axes
def target_spacing_from(spacings: np.ndarray, threshold: float = ANISOTROPY_THRESHOLD) -> list[float]:
    """Median spacing; on anisotropic data the coarse axis takes its 10th percentile instead.

    The coarse axis is never made finer than the other axes' target spacing (that would
    only invent slices)."""
    spacings = np.asarray(spacings, dtype=float)
    target = np.median(spacings, axis=0)
    if target.max() / target.min() > threshold:
        axis = int(np.argmax(target))
        others = [target[a] for a in range(3) if a != axis]
        target[axis] = max(float(np.percentile(spacings[:, axis], 10)), max(others))
    return [float(s) for s in target]


def transposition_for(target_spacing: Sequence[float]) -> tuple[list[int], list[int]]:
    """(forward, backward): the lowest-resolution axis first, the others in their order."""
    coarse = int(np.argmax(target_spacing))
    forward = [coarse] + [a for a in range(3) if a != coarse]
    backward = [forward.index(a) for a in range(3)]
    return forward, backward


def compute_strides(spacing: Sequence[float], patch: Sequence[int], num_levels: int = NUM_LEVELS,
                    min_feature: int = MIN_FEATURE_SIZE) -> list[list[int]]:
    """Per-level strides (1 or 2 per axis) for a patch, like nnU-Net's pooling rule.

    An axis is downsampled at a level only if its current spacing is at most twice the
    finest current spacing (coarse axes wait until the others catch up) and its feature
    map stays at least `min_feature` voxels."""
    sp = [float(s) for s in spacing]
    size = [int(p) for p in patch]
    strides = []
    for _ in range(num_levels):
        finest = min(sp)
        step = [2 if sp[a] <= 2 * finest + 1e-8 and size[a] >= 2 * min_feature else 1 for a in range(3)]
        strides.append(step)
        sp = [s * f for s, f in zip(sp, step)]
        size = [n // f for n, f in zip(size, step)]
    return strides


def _round_patch(patch: Sequence[int], spacing: Sequence[float],
                 make_network: Callable[[list[list[int]]], NetworkConfig]) -> tuple[list[int], list[list[int]]]:
    """Round a patch up to a multiple of its own total downsampling (strides depend on the patch)."""
    patch = [int(p) for p in patch]
    for _ in range(8):
        strides = compute_strides(spacing, patch)
        td = make_network(strides).total_downsampling()
        rounded = [int(math.ceil(p / d) * d) for p, d in zip(patch, td)]
        if rounded == patch:
            return patch, strides
        patch = rounded
    strides = compute_strides(spacing, patch)
    return patch, strides


# ----------------------------------------------------------------- network widths
def level_channels_for(base_channels: int, num_levels: int = NUM_LEVELS) -> tuple[int, ...]:
    """Levels get 2x, 4x, 8x, 16x `base_channels` (paper: stem 32, levels 64..512), capped at 512."""
    return tuple(min(base_channels * 2 ** (i + 1), MAX_LEVEL_CHANNELS) for i in range(num_levels))


def network_for(num_channels: int, num_classes: int, base_channels: int, strides,
                cell_style: str = "c2fnas") -> NetworkConfig:
    """The planned network: widths from `base_channels`, the given per-level strides."""
    return NetworkConfig(in_channels=num_channels, num_classes=num_classes, stem_channels=base_channels,
                         level_channels=level_channels_for(base_channels),
                         strides=tuple(tuple(s) for s in strides), through_plane_axis=0, cell_style=cell_style)


# ----------------------------------------------------------------- fitting
def _default_cost_fn() -> CostFn:
    return estimate_cost


def _training_bytes(cost_fn: CostFn, genotype, network: NetworkConfig, patch, batch: int) -> float:
    return float(cost_fn(genotype, network, tuple(int(p) for p in patch), batch_size=int(batch)).training_bytes)


def initial_patch(median_shape: Sequence[int], spacing: Sequence[float],
                  max_voxels: int = MAX_START_VOXELS) -> list[int]:
    """An isotropic-in-mm box of at most `max_voxels` voxels, clipped to the median shape."""
    inv = np.array([1.0 / s for s in spacing])
    scale = (max_voxels / np.prod(inv)) ** (1.0 / 3.0)
    box = np.maximum(np.round(inv * scale), 1)
    return [int(min(b, m)) for b, m in zip(box, median_shape)]


def fit_patch_and_batch(median_shape: Sequence[int], spacing: Sequence[float], dataset_voxels: int,
                        genotype, make_network: Callable[[list[list[int]]], NetworkConfig],
                        gpu_memory_gb: float, cost_fn: CostFn | None = None) -> dict[str, Any]:
    """Largest patch (shaped like the median case) and then batch that fit the memory budget.

    Starts from `initial_patch`, shrinks the axis that is largest relative to the median
    shape by that axis's total downsampling until batch 2 fits, then grows the batch up to
    the nnU-Net cap. Returns patch_size, batch_size, network, training_bytes.
    """
    cost_fn = cost_fn or _default_cost_fn()
    budget = float(gpu_memory_gb) * GIB
    median = [max(1, int(m)) for m in median_shape]
    patch, strides = _round_patch(initial_patch(median, spacing), spacing, make_network)
    while True:
        network = make_network(strides)
        need = _training_bytes(cost_fn, genotype, network, patch, 2)
        if need <= budget:
            break
        td = network.total_downsampling()
        candidates = []
        for a in range(3):
            step = td[a] if patch[a] > td[a] else patch[a] // 2
            if patch[a] - step >= MIN_PATCH_AXIS:
                # largest relative to the median first; ties: the larger physical extent
                candidates.append((patch[a] / median[a], patch[a] * spacing[a], a, step))
        if not candidates:
            raise PlansError(f"gpu_memory_gb={gpu_memory_gb:g} is too small: the smallest patch {patch} with "
                             f"batch 2 needs {need / GIB:.2f} GB (raise --gpu-memory-gb or lower --base-channels)")
        _, _, axis, step = max(candidates)
        patch[axis] -= step
        patch, strides = _round_patch(patch, spacing, make_network)

    cap = max(2, int(BATCH_DATASET_FRACTION * dataset_voxels / float(np.prod(patch))))
    batch = 2
    if cap > 2:
        one = _training_bytes(cost_fn, genotype, network, patch, 1)
        per_sample = max(need - one, 1.0)
        batch = int(min(cap, max(2, 2 + (budget - need) // per_sample)))
        while batch > 2:
            trial = _training_bytes(cost_fn, genotype, network, patch, batch)
            if trial <= budget:
                need = trial
                break
            batch -= 1
    return {"patch_size": patch, "batch_size": batch, "network": network, "training_bytes": need}


def auto_base_channels(widths: Sequence[int], median_shape: Sequence[int], spacing: Sequence[float],
                       dataset_voxels: int, genotype, gpu_memory_gb: float,
                       make_network: Callable[[int, list[list[int]]], NetworkConfig],
                       cost_fn: CostFn | None = None) -> dict[str, Any]:
    """The fit of the widest of `widths` whose own state does not crowd the patch out.

    At a small target the default width's weights, gradients and momentum take most of the
    memory and the patch shrinks to a corner of the case: on the hippocampus at 0.25 GB width 32's
    32x32x24 patch scored 0.42 test Dice below width 16's 64x64x48 (one seed,
    documentation/studies/head_to_head.md). The last width is taken whatever it leaves; a width that does not fit at
    all gives way to the next, and only the last one's error is raised."""
    cost_fn = cost_fn or _default_cost_fn()
    for i, width in enumerate(widths):
        last = i == len(widths) - 1
        network_at = functools.partial(make_network, width)
        try:
            fit = fit_patch_and_batch(median_shape, spacing, dataset_voxels, genotype, network_at, gpu_memory_gb,
                                      cost_fn)
        except PlansError:
            if last:
                raise
            continue
        state = _state_bytes(cost_fn, genotype, fit["network"], fit["patch_size"])
        if last or not _crowded(state, gpu_memory_gb, fit["patch_size"], median_shape):
            return fit
    raise AssertionError("unreachable: the last width returns or raises")


# ----------------------------------------------------------------- normalization
def normalization_for(fingerprint: dict[str, Any]) -> list[dict[str, Any]]:
    """CT: dataset-wide clip + z-score from foreground stats; others: per-image z-score."""
    crop_removed_much = float(fingerprint.get("median_relative_size_after_crop", 1.0)) < 0.75
    out = []
    channel_names = {int(k): v for k, v in fingerprint["channel_names"].items()}
    for c in sorted(channel_names):
        if str(channel_names[c]).strip().upper() == "CT":
            st = fingerprint["foreground_intensity_statistics"][str(c)]
            out.append({"scheme": "CT", "use_nonzero_mask": False, "mean": float(st["mean"]),
                        "std": float(max(st["std"], 1e-8)), "lower": float(st["percentile_00_5"]),
                        "upper": float(st["percentile_99_5"])})
        else:
            out.append({"scheme": "zscore", "use_nonzero_mask": bool(crop_removed_much)})
    return out


# ----------------------------------------------------------------- the planner
def plan_experiment(fingerprint: dict[str, Any], dataset=None, gpu_memory_gb: float = 8.0,
                    base_channels: int | None = None, genotype=None, cost_fn: CostFn | None = None,
                    cell_style: str = "c2fnas") -> Plans:
    """Plans for a task from its fingerprint (`dataset` only supplies the name when given).
    `cell_style` picks the wiring (nas.config.CELL_STYLES); patch and batch are fitted to it.
    `base_channels` None: 32, halved (to 8 at most) while the network's own state would leave the
    patch a corner of the case (`auto_base_channels`); a number is taken as it is."""
    if gpu_memory_gb is None or gpu_memory_gb <= 0:
        raise PlansError(f"gpu_memory_gb must be > 0, got {gpu_memory_gb}")
    if base_channels is not None and int(base_channels) < 1:
        raise PlansError(f"base_channels must be >= 1, got {base_channels}")
    if cell_style not in CELL_STYLES:
        raise PlansError(f"cell style {cell_style!r}: expected one of {', '.join(CELL_STYLES)}")
    spacings = np.asarray(fingerprint["spacings"], dtype=float)
    shapes = np.asarray(fingerprint["shapes_after_crop"], dtype=float)
    if spacings.ndim != 2 or spacings.shape[1] != 3 or len(spacings) == 0:
        raise PlansError("fingerprint holds no training case spacings")
    if np.any(spacings <= 0):
        raise PlansError(f"fingerprint has non-positive spacings: {spacings[np.any(spacings <= 0, axis=1)][0]}")

    target = target_spacing_from(spacings)
    forward, backward = transposition_for(target)
    median_spacing = np.median(spacings, axis=0)
    anisotropic = bool(median_spacing.max() / median_spacing.min() > ANISOTROPY_THRESHOLD)

    new_shapes = np.maximum(np.round(shapes * spacings / np.asarray(target)), 1)[:, forward]
    median_shape = [int(v) for v in np.median(new_shapes, axis=0)]
    dataset_voxels = int(np.sum(np.prod(new_shapes, axis=1)))
    target_t = [target[a] for a in forward]

    channel_names = {int(k): str(v) for k, v in fingerprint["channel_names"].items()}
    labels = {str(k): int(v) for k, v in fingerprint["labels"].items()}
    genotype = genotype if genotype is not None else reference_genotype()
    widths = AUTO_BASE_CHANNELS if base_channels is None else (int(base_channels),)
    fit = auto_base_channels(widths, median_shape, target_t, dataset_voxels, genotype, gpu_memory_gb,
                             lambda width, strides: network_for(len(channel_names), len(labels), width, strides,
                                                                cell_style), cost_fn)

    plans = Plans(
        task_name=Path(dataset.folder).name if dataset is not None else fingerprint["task_name"],
        channel_names=channel_names, labels=labels, num_classes=len(labels),
        target_spacing=target_t, transpose_forward=forward, transpose_backward=backward,
        normalization=normalization_for(fingerprint),
        resampling=default_resampling(anisotropic, ANISOTROPY_THRESHOLD),
        network=fit["network"], genotype=genotype,
        patch_size=fit["patch_size"], batch_size=int(fit["batch_size"]),
        gpu_memory_gb=float(gpu_memory_gb), estimated_memory_gb=round(fit["training_bytes"] / GIB, 4),
        plans_name=DEFAULT_PLANS_NAME,
        original_median_spacing=[float(median_spacing[a]) for a in forward],
        median_shape=median_shape, num_training_cases=int(len(spacings)), dataset_voxels=dataset_voxels)
    plans.validate()
    return plans


def _cover(patch: Sequence[int], median: Sequence[int]) -> float:
    return float(np.prod(patch)) / float(np.prod(median))


def _crowded(state_bytes: float, gpu_memory_gb: float, patch: Sequence[int], median: Sequence[int]) -> bool:
    """The network's own state takes most of the target and leaves the patch a corner of the case."""
    return state_bytes > STATE_SHARE_NOTE * gpu_memory_gb * GIB and _cover(patch, median) < COVER_NOTE


def _state_bytes(cost_fn: CostFn, genotype, network: NetworkConfig, patch) -> float:
    cost = cost_fn(genotype, network, tuple(int(p) for p in patch), batch_size=2)
    return float(cost.weight_bytes + cost.gradient_bytes + cost.optimizer_bytes)


def memory_target_note(plans: Plans, cost_fn: CostFn | None = None) -> str | None:
    """A warning when the network's own state leaves the patch little of the target.

    `--gpu-memory-gb` counts the weights, gradients and momentum (nnU-Net's target does not), so
    at a small target a wide network leaves the patch a remainder: on the hippocampus at 0.25 GB
    width 32's state takes 0.20 GB and the patch comes out 3.1x smaller than nnU-Net's, which
    measurably costs test Dice (documentation/studies/head_to_head.md). The default width is
    narrowed there (`auto_base_channels`); this names a width given by hand that is not. None
    where the state takes at most half the target or the patch covers a quarter of the median case."""
    state = _state_bytes(cost_fn or _default_cost_fn(), plans.genotype, plans.network, plans.patch_size)
    median = plans.median_shape or list(plans.patch_size)
    if not _crowded(state, plans.gpu_memory_gb, plans.patch_size, median):
        return None
    fmt = lambda v: "x".join(str(int(x)) for x in v)  # noqa: E731
    cover = _cover(plans.patch_size, median)
    return (f"{plans.task_name}: the network's weights, gradients and momentum take {state / GIB:.2f} of the "
            f"{plans.gpu_memory_gb:g} GB target, leaving the patch {fmt(plans.patch_size)} ({cover:.0%} of the "
            f"median case {fmt(median)}); a small patch sees little context: a larger --gpu-memory-gb or a "
            "smaller --base-channels gives it more (reference/plans.md)")


def refit_plans(plans: Plans, genotype, gpu_memory_gb: float | None = None, cost_fn: CostFn | None = None) -> Plans:
    """A copy of `plans` with `genotype` and patch/batch refitted to the (new) memory budget.

    Preprocessing-relevant fields (spacing, transposition, normalization) are unchanged,
    so the preprocessed data stay valid."""
    new = plans.copy()
    budget = float(gpu_memory_gb if gpu_memory_gb is not None else plans.gpu_memory_gb)
    median_shape = plans.median_shape or list(plans.patch_size)
    dataset_voxels = plans.dataset_voxels or int(np.prod(median_shape)) * max(plans.num_training_cases, 1)
    def make_network(strides) -> NetworkConfig:
        return dataclasses.replace(plans.network, strides=tuple(tuple(s) for s in strides))

    fit = fit_patch_and_batch(median_shape, plans.target_spacing, dataset_voxels, genotype, make_network,
                              budget, cost_fn)
    new.genotype = genotype
    new.network = fit["network"]
    new.patch_size = fit["patch_size"]
    new.batch_size = int(fit["batch_size"])
    new.gpu_memory_gb = budget
    new.estimated_memory_gb = round(fit["training_bytes"] / GIB, 4)
    new.validate()
    return new
