"""Patch-wise prediction of a whole case with Gaussian importance weighting.

Networks are trained on patches, so a case is predicted tile by tile. Tiles overlap
(step 0.5 of the patch); each tile's logits are weighted by a Gaussian centred on the
tile because a patch's centre has more context than its border, and the weighted sum is
divided by the summed weights. Mirroring test-time augmentation averages the network
over every combination of flips of the given axes.
"""

from __future__ import annotations

import itertools
import math
from functools import lru_cache
from typing import Callable, Sequence

import numpy as np
import torch
from acvl_utils.cropping_and_padding.padding import pad_nd_image
from tqdm import tqdm

from c2fnas_auto.nas.execution import ExecutionOptions, autocast, check_precision

ForwardFn = Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]
PROGRESS_MIN_TILES = 64


@lru_cache(maxsize=8)
def _gaussian_np(patch_size: tuple[int, ...], sigma_scale: float) -> np.ndarray:
    axes = []
    for p in patch_size:
        sigma = max(p * sigma_scale, 1e-6)
        d = np.arange(p, dtype=np.float64) - (p - 1) / 2.0
        axes.append(np.exp(-0.5 * (d / sigma) ** 2))
    g = axes[0]
    for a in axes[1:]:
        g = np.multiply.outer(g, a)
    g = g / g.max()
    return g


def gaussian_importance_map(patch_size: Sequence[int], sigma_scale: float = 1.0 / 8,
                            device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Separable Gaussian, sigma = sigma_scale * patch per axis, max 1, no zeros.

    Zeros (underflow in the corners) are replaced by the smallest positive value so that
    every voxel gets a non-zero total weight.
    """
    g = torch.from_numpy(_gaussian_np(tuple(int(p) for p in patch_size), float(sigma_scale))).to(dtype)
    positive = g[g > 0]
    g = torch.clamp(g, min=float(positive.min()) if positive.numel() else 1e-8)
    return g.to(device)


def tile_starts(image_shape: Sequence[int], patch_size: Sequence[int], step_size: float) -> list[list[int]]:
    """Per axis the tile start positions: evenly spaced, first at 0, last touching the border.

    The number of tiles is the smallest that keeps the step at most `step_size * patch`.
    """
    if not 0 < step_size <= 1:
        raise ValueError(f"step_size must be in (0, 1], got {step_size}")
    starts = []
    for size, patch in zip(image_shape, patch_size):
        if size < patch:
            raise ValueError(f"image axis {size} smaller than patch {patch}; pad first")
        max_step = patch * step_size
        n = int(math.ceil((size - patch) / max_step)) + 1 if size > patch else 1
        if n == 1:
            starts.append([0])
            continue
        step = (size - patch) / (n - 1)
        starts.append([int(round(step * i)) for i in range(n)])
    return starts


def mirror_combinations(mirror_axes: Sequence[int] | None) -> list[tuple[int, ...]]:
    """Every subset of the mirror axes (including none): 8 for three axes."""
    if not mirror_axes:
        return [()]
    axes = tuple(int(a) for a in mirror_axes)
    return [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]


def _default_forward(network: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return network(x)


def _fits_on_device(device: torch.device, nbytes: int) -> bool:
    """Accumulate on the GPU only when the buffers take at most half of its free memory."""
    if device.type != "cuda":
        return True
    try:
        free, _ = torch.cuda.mem_get_info(device)
    except RuntimeError:
        return False
    return nbytes < 0.5 * free


def sliding_window_predict(network: torch.nn.Module, data: torch.Tensor | np.ndarray, patch_size: Sequence[int],
                           num_classes: int, step_size: float = 0.5, gaussian: bool = True,
                           mirror_axes: Sequence[int] | None = (0, 1, 2), device: torch.device | str | None = None,
                           forward_fn: ForwardFn | None = None, tile_batch_size: int = 2,
                           progress: bool | None = None,
                           execution: ExecutionOptions = ExecutionOptions()) -> torch.Tensor:
    """Logits (K, z, y, x) float32 on the CPU for a (C, z, y, x) case.

    `mirror_axes` are spatial axes (0 = z). `progress=None` shows a bar only when the case
    has many tiles. `tile_batch_size` defaults to 2 because PyTorch's CPU heuristic sends
    single-sample 3D convolutions to a slow reference kernel (about 2x slower end to end
    here); two tiles per forward take the oneDNN path. The network is put in eval mode for the call and
    restored afterwards.
    Of `execution` (nas/execution.py) only the precision applies, the network's compute precision
    (None: fp16 autocast on CUDA, fp32 elsewhere): the network was prepared by whoever built it.
    Logits are accumulated in float32 whatever the precision.

    One function: tiling, mirroring and the Gaussian-weighted accumulation share the same buffers and
    loop."""
    forward_fn = forward_fn or _default_forward
    if device is None:
        try:
            device = next(network.parameters()).device
        except StopIteration:
            device = torch.device("cpu")
    device = torch.device(device)
    patch_size = [int(p) for p in patch_size]
    if isinstance(data, np.ndarray):
        data = torch.from_numpy(np.ascontiguousarray(data))
    if data.ndim != len(patch_size) + 1:
        raise ValueError(f"expected data (C, *spatial) with {len(patch_size)} spatial axes, got {tuple(data.shape)}")
    data = data.float()
    padded, slicer = pad_nd_image(data, patch_size, "constant", {"value": 0}, True, None)
    spatial = tuple(padded.shape[1:])
    starts = tile_starts(spatial, patch_size, step_size)
    tiles = list(itertools.product(*starts))
    flips = mirror_combinations(mirror_axes)

    acc_bytes = (num_classes + 1) * int(np.prod(spatial)) * 4
    acc_device = device if _fits_on_device(device, acc_bytes) else torch.device("cpu")
    logits_sum = torch.zeros((num_classes, *spatial), dtype=torch.float32, device=acc_device)
    weight_sum = torch.zeros(spatial, dtype=torch.float32, device=acc_device)
    if gaussian:
        weight = gaussian_importance_map(patch_size, device=acc_device)
    else:
        weight = torch.ones(patch_size, dtype=torch.float32, device=acc_device)

    padded = padded.to(device, non_blocking=True)
    precision = check_precision(execution.precision, device)
    was_training = network.training
    network.eval()
    show = progress if progress is not None else len(tiles) >= PROGRESS_MIN_TILES
    bar = tqdm(total=len(tiles), desc="sliding window", unit="tile", disable=not show, leave=False)
    batch = max(1, int(tile_batch_size))
    try:
        with torch.inference_mode(), autocast(device, precision):
            for b0 in range(0, len(tiles), batch):
                group = tiles[b0:b0 + batch]
                slices = [tuple(slice(s, s + p) for s, p in zip(start, patch_size)) for start in group]
                x = torch.stack([padded[(slice(None), *sl)] for sl in slices])
                pred = None
                for flip in flips:
                    dims = [a + 2 for a in flip]
                    xi = torch.flip(x, dims) if dims else x
                    out = forward_fn(network, xi)
                    if isinstance(out, (list, tuple)):
                        out = out[0]
                    out = out.float()
                    if dims:
                        out = torch.flip(out, dims)
                    pred = out if pred is None else pred + out
                if len(flips) > 1:
                    pred = pred / len(flips)
                pred = pred.to(acc_device) * weight
                for i, sl in enumerate(slices):
                    logits_sum[(slice(None), *sl)] += pred[i]
                    weight_sum[sl] += weight
                bar.update(len(group))
    finally:
        bar.close()
        network.train(was_training)
    logits_sum /= weight_sum
    out = logits_sum[(slice(None), *slicer[1:])]
    return out.to("cpu", torch.float32).contiguous()
