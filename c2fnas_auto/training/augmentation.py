"""Training-time augmentation built from batchgenerators transforms.

Defaults follow nnU-Net's probabilities. Spatial augmentation (rotation, scaling) reads
from an *enlarged* initial patch and cuts the final patch out of its centre, so rotated
or zoomed-out patches are filled with image content instead of padding. When the patch
is anisotropic (first, low-resolution axis much shorter) rotation and scaling are done
in-plane only ("2D-style"), since rotating across a 5 mm axis would smear slices.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from batchgenerators.transforms.abstract_transforms import AbstractTransform, Compose
from batchgenerators.transforms.color_transforms import (BrightnessMultiplicativeTransform,
                                                         ContrastAugmentationTransform, GammaTransform)
from batchgenerators.transforms.noise_transforms import GaussianBlurTransform, GaussianNoiseTransform
from batchgenerators.transforms.resample_transforms import SimulateLowResolutionTransform
from batchgenerators.transforms.spatial_transforms import MirrorTransform, SpatialTransform

ANISOTROPY_RATIO = 3.0


@dataclass
class AugmentationParams:
    """Ranges (radians for angles) and per-sample probabilities; defaults are nnU-Net's."""

    rotation_3d: float = np.deg2rad(30.0)
    rotation_2d: float = np.pi
    p_rotation: float = 0.2
    scale: tuple[float, float] = (0.7, 1.4)
    p_scale: float = 0.2
    p_noise: float = 0.1
    noise_variance: tuple[float, float] = (0.0, 0.1)
    p_blur: float = 0.2
    blur_sigma: tuple[float, float] = (0.5, 1.0)
    p_brightness: float = 0.15
    brightness: tuple[float, float] = (0.75, 1.25)
    p_contrast: float = 0.15
    p_low_res: float = 0.25
    low_res_zoom: tuple[float, float] = (0.5, 1.0)
    p_gamma_inverted: float = 0.1
    p_gamma: float = 0.3
    gamma: tuple[float, float] = (0.7, 1.5)
    mirror_axes: tuple[int, ...] = (0, 1, 2)


def use_2d_augmentation(patch_size: Sequence[int]) -> bool:
    """True when the first axis is much shorter than the in-plane extent (nnU-Net's rule)."""
    return len(patch_size) == 3 and max(patch_size[1:]) / patch_size[0] > ANISOTROPY_RATIO


# The initial patch covers rotation about each axis on its own and zoom-out up to this factor
# (nnU-Net's sizing): the rare sample that combines large angles on all three axes with a
# scale above it reads a few zeros at the corners of its source region instead of
# transforming an 8x larger region for every sample.
INITIAL_PATCH_SCALE = 1 / 0.85


def _rotation(axis: int, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    m = np.eye(3)
    i, j = [a for a in range(3) if a != axis]
    m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
    return m


def _rotated_extent(shape: Sequence[int], max_angle: float) -> np.ndarray:
    """Per-axis extent of a box of `shape` rotated by up to `max_angle` about any *one* axis."""
    dim = len(shape)
    half = np.asarray(shape, dtype=float) / 2
    corners = np.array(list(itertools.product(*[(-h, h) for h in half])))
    angles = np.linspace(-min(max_angle, np.pi / 2), min(max_angle, np.pi / 2), 13)
    best = half.copy()
    mats = ([np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) for a in angles] if dim == 2 else
            [_rotation(axis, a) for axis in range(3) for a in angles])
    for m in mats:
        best = np.maximum(best, np.abs(corners @ m.T).max(0))
    return 2 * best


def initial_patch_size(patch_size: Sequence[int], params: AugmentationParams | None = None) -> tuple[int, ...]:
    """Size of the region the batchgenerators backend loads so rotation and scaling find image content.

    Sized as nnU-Net sizes it (rotation about one axis at a time, angles capped at 90
    degrees, zoom-out up to INITIAL_PATCH_SCALE); the device backend instead cuts exactly
    the region each batch's drawn transforms read (`device_augmentation.region_size`).
    """
    params = params or AugmentationParams()
    patch = [int(p) for p in patch_size]
    smax = min(max(params.scale), INITIAL_PATCH_SCALE)
    if use_2d_augmentation(patch):
        inplane = _rotated_extent(patch[1:], params.rotation_2d) * smax
        return (patch[0],) + tuple(int(np.ceil(v)) for v in np.maximum(inplane, patch[1:]))
    ext = _rotated_extent(patch, params.rotation_3d) * smax
    return tuple(int(np.ceil(v)) for v in np.maximum(ext, patch))


class FoldFirstAxisIntoChannels(AbstractTransform):
    """(B, C, z, y, x) -> (B, C*z, y, x) so a 2D spatial transform treats each slice alike."""

    def __init__(self, keys: Sequence[str] = ("data", "seg")):
        self.keys = tuple(keys)

    def __call__(self, **batch):
        for k in self.keys:
            a = batch.get(k)
            if a is not None:
                batch[f"_{k}_shape"] = a.shape
                batch[k] = a.reshape(a.shape[0], a.shape[1] * a.shape[2], *a.shape[3:])
        return batch


class UnfoldFirstAxisFromChannels(AbstractTransform):
    """Inverse of FoldFirstAxisIntoChannels, keeping the new in-plane size."""

    def __init__(self, keys: Sequence[str] = ("data", "seg")):
        self.keys = tuple(keys)

    def __call__(self, **batch):
        for k in self.keys:
            a = batch.get(k)
            if a is not None:
                b, c, z = batch.pop(f"_{k}_shape")[:3]
                batch[k] = a.reshape(b, c, z, *a.shape[2:])
        return batch


class SegToInt(AbstractTransform):
    """Spatial transforms return float labels; cast back to integers (nearest interpolation keeps values)."""

    def __call__(self, **batch):
        if batch.get("seg") is not None:
            batch["seg"] = np.rint(batch["seg"]).astype(np.int16)
        return batch


def _spatial(patch_size: Sequence[int], params: AugmentationParams, two_d: bool) -> AbstractTransform:
    if two_d:
        angles = dict(angle_x=(-params.rotation_2d, params.rotation_2d), angle_y=(0, 0), angle_z=(0, 0))
    else:
        r = params.rotation_3d
        angles = dict(angle_x=(-r, r), angle_y=(-r, r), angle_z=(-r, r))
    return SpatialTransform(
        tuple(patch_size), patch_center_dist_from_border=None, do_elastic_deform=False,
        do_rotation=True, **angles, p_rot_per_sample=params.p_rotation, p_rot_per_axis=1,
        do_scale=True, scale=params.scale, p_scale_per_sample=params.p_scale,
        border_mode_data="constant", border_cval_data=0, order_data=3,
        border_mode_seg="constant", border_cval_seg=0, order_seg=0, random_crop=False)


def build_transforms(patch_size: Sequence[int], params: AugmentationParams | None = None,
                     augment: bool = True) -> Compose:
    """The batch transform: spatial crop/augment from the initial patch, then intensity, mirror.

    With augment=False only the centre crop to `patch_size` and the label cast remain.
    """
    params = params or AugmentationParams()
    patch = tuple(int(p) for p in patch_size)
    if not augment:
        no_aug = AugmentationParams(p_rotation=0.0, p_scale=0.0)
        return Compose([_spatial(patch, no_aug, False), SegToInt()])
    two_d = use_2d_augmentation(patch)
    ts: list[AbstractTransform] = []
    if two_d:
        ts += [FoldFirstAxisIntoChannels(), _spatial(patch[1:], params, True), UnfoldFirstAxisFromChannels()]
    else:
        ts.append(_spatial(patch, params, False))
    ts += [
        GaussianNoiseTransform(params.noise_variance, p_per_sample=params.p_noise),
        GaussianBlurTransform(params.blur_sigma, different_sigma_per_channel=True, p_per_sample=params.p_blur,
                              p_per_channel=0.5),
        BrightnessMultiplicativeTransform(params.brightness, per_channel=True, p_per_sample=params.p_brightness),
        ContrastAugmentationTransform(p_per_sample=params.p_contrast),
        SimulateLowResolutionTransform(params.low_res_zoom, per_channel=True, p_per_channel=0.5,
                                       order_downsample=0, order_upsample=3, p_per_sample=params.p_low_res,
                                       ignore_axes=(0,) if two_d else None),
        GammaTransform(params.gamma, invert_image=True, per_channel=True, retain_stats=True,
                       p_per_sample=params.p_gamma_inverted),
        GammaTransform(params.gamma, invert_image=False, per_channel=True, retain_stats=True,
                       p_per_sample=params.p_gamma),
    ]
    if params.mirror_axes:
        ts.append(MirrorTransform(params.mirror_axes))
    ts.append(SegToInt())
    return Compose(ts)
