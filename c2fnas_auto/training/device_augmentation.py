"""The batchgenerators pipeline as batched torch operations that run where the network trains.

Same transforms, order, probabilities and ranges as `augmentation.build_transforms`
(nnU-Net's), split in two so the expensive part leaves the loader workers:

- `draw_batch` (numpy, in the worker): every random parameter of one batch, per sample
  and channel, from the worker's seeded generator, plus a seed for the voxel noise. The
  spatial draw comes first so the worker cuts only the region the rotation and scaling
  read (`region_size`), not a fixed enlarged patch.
- `DeviceAugmenter` (torch, on the training device): one `grid_sample` for the rotated or
  scaled samples (linear for images, nearest for labels), a centre crop for the others,
  then noise, separable Gaussian blur, brightness, contrast, simulated low resolution
  (`interpolate` down and up), inverted gamma, gamma and mirroring.

Interpolation differs on purpose: linear instead of batchgenerators' cubic spline for
images (the spline prefilter is most of the CPU cost), trilinear instead of cubic for the
low-resolution upsampling, and edge-replicating borders for the blur.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from c2fnas_auto.training.augmentation import AugmentationParams, use_2d_augmentation

BLUR_TRUNCATE = 4.0  # scipy.ndimage.gaussian_filter's default kernel radius in sigmas
GAMMA_EPS = 1e-7
# On CPU tensors the ops here are small (a patch is ~10^5 voxels): torch's intra-op threads
# cost more in wake-ups than they save, and on a shared machine they spin against the
# training step. One thread measured 10-100x faster per op on the 2-core benchmark box.
CPU_THREADS = 1


@contextmanager
def _cpu_threads(device: torch.device, threads: int | None):
    if device.type != "cpu" or not threads:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class BatchDraw:
    """Per-sample (B,) / per-channel (B, C) parameters; a neutral value where a transform is off."""

    affine: np.ndarray       # (B, 3, 3) output offset -> input offset (voxels), identity when not spatial
    spatial: np.ndarray      # (B,) bool
    noise_std: np.ndarray    # (B,) 0 = off
    blur_sigma: np.ndarray   # (B, C) 0 = off
    brightness: np.ndarray   # (B, C) 1 = off
    contrast: np.ndarray     # (B, C) 0 = off, else the factor
    low_res: np.ndarray      # (B, C) 0 = off, else the zoom
    gamma_inverted: np.ndarray  # (B, C) 0 = off, else gamma
    gamma: np.ndarray        # (B, C) 0 = off, else gamma
    mirror: np.ndarray       # (B, 3) bool
    noise_seed: int = 0

    def to_tensors(self) -> dict[str, torch.Tensor]:
        return {f.name: torch.as_tensor(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_tensors(cls, d: dict) -> "BatchDraw":
        return cls(**{k: (int(v) if k == "noise_seed" else np.asarray(v.cpu())) for k, v in d.items()})

    @classmethod
    def neutral(cls, batch: int, channels: int) -> "BatchDraw":
        """No augmentation at all: the starting point of tests that switch on one transform."""
        z = np.zeros((batch, channels))
        return cls(np.tile(np.eye(3), (batch, 1, 1)), np.zeros(batch, bool), np.zeros(batch), z.copy(),
                   np.ones((batch, channels)), z.copy(), z.copy(), z.copy(), z.copy(), np.zeros((batch, 3), bool))


def rotation_matrix_3d(ax: float, ay: float, az: float) -> np.ndarray:
    """batchgenerators' rotate_coords_3d matrix Rx @ Ry @ Rz (coordinates multiply it from the left)."""
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rx @ ry @ rz


def spatial_affine(angles: Sequence[float], scale: float, two_d: bool) -> np.ndarray:
    """Output-offset -> input-offset matrix equal to batchgenerators' `coords @ R * scale`.

    2D-style: one in-plane angle, the first axis untouched (neither rotated nor scaled)."""
    a = np.eye(3)
    if two_d:
        c, s = np.cos(angles[0]), np.sin(angles[0])
        a[1:, 1:] = np.array([[c, -s], [s, c]]).T * scale
        return a
    return rotation_matrix_3d(*angles).T * scale


def _two_sided(rng: np.random.Generator, lo: float, hi: float) -> float:
    """batchgenerators' rule for ranges around 1: below or above 1 with equal odds."""
    if rng.random() < 0.5 and lo < 1:
        return float(rng.uniform(lo, 1))
    return float(rng.uniform(max(lo, 1), hi))


def draw_batch(rng: np.random.Generator, batch: int, channels: int, patch_size: Sequence[int],
               params: AugmentationParams | None = None) -> BatchDraw:
    """All random parameters of one batch, drawn with batchgenerators' probabilities and ranges."""
    p = params or AugmentationParams()
    two_d = use_2d_augmentation(patch_size)
    d = BatchDraw.neutral(batch, channels)
    for b in range(batch):
        rotate, scale = rng.random() < p.p_rotation, rng.random() < p.p_scale
        if rotate or scale:
            r = p.rotation_2d if two_d else p.rotation_3d
            angles = rng.uniform(-r, r, size=1 if two_d else 3) if rotate else np.zeros(3)
            s = _two_sided(rng, *p.scale) if scale else 1.0
            d.affine[b] = spatial_affine(angles, s, two_d)
            d.spatial[b] = True
        if rng.random() < p.p_noise:
            d.noise_std[b] = rng.uniform(*p.noise_variance)  # batchgenerators uses the "variance" as std
        if rng.random() < p.p_blur:
            on = rng.random(channels) < 0.5
            d.blur_sigma[b] = np.where(on, rng.uniform(*p.blur_sigma, size=channels), 0.0)
        if rng.random() < p.p_brightness:
            d.brightness[b] = rng.uniform(*p.brightness, size=channels)
        if rng.random() < p.p_contrast:
            d.contrast[b] = [_two_sided(rng, 0.75, 1.25) for _ in range(channels)]
        if rng.random() < p.p_low_res:
            on = rng.random(channels) < 0.5
            d.low_res[b] = np.where(on, rng.uniform(*p.low_res_zoom, size=channels), 0.0)
        if rng.random() < p.p_gamma_inverted:
            d.gamma_inverted[b] = [_two_sided(rng, *p.gamma) for _ in range(channels)]
        if rng.random() < p.p_gamma:
            d.gamma[b] = [_two_sided(rng, *p.gamma) for _ in range(channels)]
        axes = [a for a in p.mirror_axes if a < 3]
        d.mirror[b, axes] = rng.random(len(axes)) < 0.5
    d.noise_seed = int(rng.integers(2 ** 62))
    return d


def region_size(affine: np.ndarray, patch_size: Sequence[int]) -> tuple[int, ...]:
    """Smallest region (same for the batch) whose centre holds every sample's transformed patch.

    A rotated/scaled patch reads sum_j |A_ij| (P_j - 1) voxels along axis i, plus one on
    each side for the linear interpolation (none on an axis no sample moves); the size keeps the parity of the
    patch so the centre crop of the untransformed samples is exact."""
    affine = np.asarray(affine).reshape(-1, 3, 3)
    if not len(affine):
        return tuple(int(p) for p in patch_size)
    half = (np.asarray(patch_size, dtype=float) - 1) / 2
    reach = np.abs(affine) @ half  # (B, 3)
    moved = (np.abs(affine - np.eye(3)) > 1e-9).any(axis=(0, 2))  # axes some sample rotates or scales
    need = np.ceil(2 * reach.max(0) + 2 * moved).astype(int)
    out = []
    for n, p in zip(need, patch_size):
        n = max(int(n), int(p))
        out.append(n + (n - int(p)) % 2)
    return tuple(out)


def _cubic_resize(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """(z, y, x) -> `shape` with cubic convolution: torch has bicubic only in 2D, so two passes
    (z, y with x as channels, then y, x); an axis already at its size passes unchanged."""
    zy = F.interpolate(x.permute(2, 0, 1)[None], size=tuple(shape[:2]), mode="bicubic", align_corners=False)
    out = F.interpolate(zy[0].permute(1, 2, 0)[None], size=tuple(shape[1:]), mode="bicubic", align_corners=False)
    return out[0]


def _flat_pairs(mask: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.flatnonzero(mask.reshape(-1)), dtype=torch.long)


class DeviceAugmenter:
    """Applies a `BatchDraw` to a batch of regions on whatever device the tensors live on."""

    def __init__(self, patch_size: Sequence[int], two_d: bool | None = None, cpu_threads: int | None = CPU_THREADS):
        self.patch_size = tuple(int(p) for p in patch_size)
        self.two_d = use_2d_augmentation(self.patch_size) if two_d is None else two_d
        self.cpu_threads = cpu_threads

    def __call__(self, data: torch.Tensor, seg: torch.Tensor, draw: BatchDraw) -> tuple[torch.Tensor, torch.Tensor]:
        """data (B, C, *region) float, seg (B, 1, *region) integer -> (B, C, *patch), (B, 1, *patch) int64."""
        with _cpu_threads(data.device, self.cpu_threads):
            return self._apply(data, seg, draw)

    def _apply(self, data: torch.Tensor, seg: torch.Tensor, draw: BatchDraw) -> tuple[torch.Tensor, torch.Tensor]:
        data, seg = self.spatial(data.float(), seg, draw)
        gen = torch.Generator(device=data.device)
        gen.manual_seed(draw.noise_seed)
        data = self.noise(data, draw.noise_std, gen)
        data = self.blur(data, draw.blur_sigma)
        data = data * torch.as_tensor(draw.brightness, dtype=data.dtype, device=data.device)[..., None, None, None]
        data = self.contrast(data, draw.contrast)
        data = self.low_resolution(data, draw.low_res)
        data = self.gamma(data, draw.gamma_inverted, invert=True)
        data = self.gamma(data, draw.gamma, invert=False)
        return self.mirror(data, seg, draw.mirror)

    # ---------------------------------------------------------------- spatial
    def spatial(self, data: torch.Tensor, seg: torch.Tensor, draw: BatchDraw):
        region, patch = data.shape[2:], self.patch_size
        lo = [(r - p) // 2 for r, p in zip(region, patch)]
        crop = (slice(None), slice(None)) + tuple(slice(a, a + p) for a, p in zip(lo, patch))
        out_d, out_s = data[crop].clone(), seg[crop].long()
        sel = np.flatnonzero(draw.spatial)
        if len(sel):
            grid = self._grid(draw.affine[sel], region, data.device)
            idx = torch.as_tensor(sel, device=data.device)
            out_d[idx] = F.grid_sample(data[idx], grid, mode="bilinear", padding_mode="zeros", align_corners=True)
            s = F.grid_sample(seg[idx].float(), grid, mode="nearest", padding_mode="zeros", align_corners=True)
            out_s[idx] = s.round().long()
        return out_d, out_s

    def _grid(self, affine: np.ndarray, region: Sequence[int], device) -> torch.Tensor:
        """grid_sample coordinates (n, *patch, 3) in (x, y, z) order, normalised with align_corners."""
        axes = [torch.arange(p, dtype=torch.float32, device=device) - (p - 1) / 2 for p in self.patch_size]
        offsets = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1)  # (*patch, 3) z, y, x
        a = torch.as_tensor(affine, dtype=torch.float32, device=device)  # (n, 3, 3)
        src = torch.einsum("nij,...j->n...i", a, offsets)
        half = torch.as_tensor([(r - 1) / 2 for r in region], dtype=torch.float32, device=device)
        return (src / half.clamp(min=0.5)).flip(-1)

    # -------------------------------------------------------------- intensity
    @staticmethod
    def noise(data: torch.Tensor, std: np.ndarray, gen: torch.Generator) -> torch.Tensor:
        sel = np.flatnonzero(std > 0)
        if len(sel):
            idx = torch.as_tensor(sel, device=data.device)
            sd = torch.as_tensor(std[sel], dtype=data.dtype, device=data.device).view(-1, 1, 1, 1, 1)
            noise = torch.randn(data[idx].shape, generator=gen, device=data.device, dtype=data.dtype)
            data[idx] = data[idx] + noise * sd
        return data

    @staticmethod
    def blur(data: torch.Tensor, sigma: np.ndarray) -> torch.Tensor:
        """Separable Gaussian per (sample, channel): three grouped 1D convolutions."""
        pairs = _flat_pairs(sigma > 0)
        if not len(pairs):
            return data
        flat = data.reshape(-1, *data.shape[2:])
        sig = torch.as_tensor(sigma.reshape(-1)[pairs.numpy()], dtype=data.dtype, device=data.device)
        radius = int(BLUR_TRUNCATE * float(sig.max()) + 0.5)
        t = torch.arange(-radius, radius + 1, dtype=data.dtype, device=data.device)
        kern = torch.exp(-0.5 * (t[None] / sig[:, None]) ** 2)
        kern = kern * (t[None].abs() <= (BLUR_TRUNCATE * sig[:, None] + 0.5).floor())  # scipy's radius per sigma
        kern = kern / kern.sum(1, keepdim=True)
        idx = pairs.to(data.device)
        x = flat[idx][None]  # (1, n, z, y, x)
        n = len(pairs)
        for axis in range(3):
            shape = [n, 1, 1, 1, 1]
            shape[2 + axis] = 2 * radius + 1
            pad = [0] * 6
            pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius
            x = F.conv3d(F.pad(x, pad, mode="replicate"), kern.view(shape), groups=n)
        flat = flat.clone()
        flat[idx] = x[0]
        return flat.view_as(data)

    @staticmethod
    def contrast(data: torch.Tensor, factor: np.ndarray) -> torch.Tensor:
        pairs = _flat_pairs(factor > 0)
        if not len(pairs):
            return data
        flat = data.reshape(data.shape[0] * data.shape[1], -1)
        idx = pairs.to(data.device)
        x = flat[idx]
        f = torch.as_tensor(factor.reshape(-1)[pairs.numpy()], dtype=data.dtype, device=data.device)[:, None]
        mn = x.mean(1, keepdim=True)
        lo, hi = x.amin(1, keepdim=True), x.amax(1, keepdim=True)
        flat = flat.clone()
        flat[idx] = torch.minimum(torch.maximum((x - mn) * f + mn, lo), hi)
        return flat.view_as(data)

    def low_resolution(self, data: torch.Tensor, zoom: np.ndarray) -> torch.Tensor:
        """Nearest-neighbour downsampling by the drawn zoom, cubic back (axis 0 kept in 2D style)."""
        pairs = np.flatnonzero(zoom.reshape(-1) > 0)
        if not len(pairs):
            return data
        shape = tuple(data.shape[2:])
        flat = data.reshape(-1, *shape).clone()
        for k in pairs:
            z = float(zoom.reshape(-1)[k])
            small = [max(1, int(round(s * z))) for s in shape]
            if self.two_d:
                small[0] = shape[0]
            x = F.interpolate(flat[k][None, None], size=small, mode="nearest-exact")[0, 0]
            flat[k] = _cubic_resize(x, shape)
        return flat.view_as(data)

    @staticmethod
    def gamma(data: torch.Tensor, gamma: np.ndarray, invert: bool) -> torch.Tensor:
        """Gamma on the channel's range, mean and spread kept (batchgenerators' retain_stats)."""
        pairs = _flat_pairs(gamma > 0)
        if not len(pairs):
            return data
        flat = data.reshape(data.shape[0] * data.shape[1], -1)
        idx = pairs.to(data.device)
        x = -flat[idx] if invert else flat[idx]
        g = torch.as_tensor(gamma.reshape(-1)[pairs.numpy()], dtype=data.dtype, device=data.device)[:, None]
        mn, sd = x.mean(1, keepdim=True), x.std(1, unbiased=False, keepdim=True)
        lo = x.amin(1, keepdim=True)
        rng = x.amax(1, keepdim=True) - lo + GAMMA_EPS
        x = ((x - lo) / rng).pow(g) * rng + lo
        x = x - x.mean(1, keepdim=True)
        x = x / (x.std(1, unbiased=False, keepdim=True) + 1e-8) * sd + mn
        flat = flat.clone()
        flat[idx] = -x if invert else x
        return flat.view_as(data)

    @staticmethod
    def mirror(data: torch.Tensor, seg: torch.Tensor, mirror: np.ndarray):
        for b in np.flatnonzero(mirror.any(1)):
            dims = [int(a) + 1 for a in np.flatnonzero(mirror[b])]
            data[b] = data[b].flip(dims)
            seg[b] = seg[b].flip(dims)
        return data, seg
