"""The device backend against batchgenerators, the reference implementation.

Spatial: the same drawn rotation and scale, applied by batchgenerators' own coordinate
code and by one grid_sample, give the same patch within interpolation tolerance.
Intensity: over many draws each transform gives the same mean and spread of its output.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from batchgenerators.augmentations.utils import (create_zero_centered_coordinate_mesh, interpolate_img,
                                                 rotate_coords_2d, rotate_coords_3d, scale_coords)

from c2fnas_auto.errors import InputError
from c2fnas_auto.training.augmentation import AugmentationParams, build_transforms
from c2fnas_auto.training.dataloader import (CaseData, check_augmentation, default_augmentation,
                                             make_batch_iterator)
from c2fnas_auto.training.device_augmentation import (BatchDraw, DeviceAugmenter, _cpu_threads, draw_batch,
                                                      region_size, spatial_affine)


def _smooth(shape, seed=0) -> np.ndarray:
    """A smooth image (sum of low-frequency waves) so linear and cubic interpolation agree."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(0, 1, s) for s in shape], indexing="ij")
    out = np.zeros(shape)
    for _ in range(3):
        f, ph = rng.uniform(0.5, 1.5, 3), rng.uniform(0, 6, 3)
        out += np.prod([np.sin(2 * np.pi * fi * g + p) for fi, g, p in zip(f, grids, ph)], axis=0)
    return out.astype(np.float32)


def _bg_spatial(img, patch, angles, scale, two_d, order):
    """batchgenerators' augment_spatial coordinate path (random_crop=False) for given parameters."""
    if two_d:
        out = []
        for z in range(img.shape[0]):
            coords = rotate_coords_2d(create_zero_centered_coordinate_mesh(patch[1:]), angles[0])
            coords = scale_coords(coords, scale)
            for d in range(2):
                coords[d] += img.shape[d + 1] / 2.0 - 0.5
            out.append(interpolate_img(img[z], coords, order, "constant", cval=0))
        return np.stack(out)
    coords = rotate_coords_3d(create_zero_centered_coordinate_mesh(patch), *angles)
    coords = scale_coords(coords, scale)
    for d in range(3):
        coords[d] += img.shape[d] / 2.0 - 0.5
    return interpolate_img(img, coords, order, "constant", cval=0)


@pytest.mark.parametrize("two_d", [False, True])
def test_same_rotation_and_scale_give_the_same_patch(two_d):
    patch = (4, 20, 20) if two_d else (10, 12, 14)
    angles = (0.9,) if two_d else (0.3, -0.2, 0.25)
    scale = 1.25
    affine = spatial_affine(angles, scale, two_d)
    region = region_size(affine[None], patch)
    img = _smooth(region)
    draw = BatchDraw.neutral(1, 1)
    draw.affine[0], draw.spatial[0] = affine, True
    aug = DeviceAugmenter(patch, two_d=two_d)
    seg = torch.from_numpy((img > 0.3).astype(np.int8))[None, None]
    ours, ours_seg = aug.spatial(torch.from_numpy(img)[None, None], seg, draw)
    linear = _bg_spatial(img, patch, angles, scale, two_d, order=1)
    cubic = _bg_spatial(img, patch, angles, scale, two_d, order=3)
    nearest = _bg_spatial((img > 0.3).astype(np.float32), patch, angles, scale, two_d, order=0)
    assert ours.shape == (1, 1) + patch
    np.testing.assert_allclose(ours[0, 0].numpy(), linear, atol=1e-4)  # same maths, same interpolation
    assert np.abs(ours[0, 0].numpy() - cubic).max() < 0.05 * np.abs(cubic).max()  # spline vs linear
    assert (ours_seg[0, 0].numpy() == nearest).mean() > 0.98  # nearest neighbour: ties at voxel borders only
    assert ours_seg.dtype == torch.int64


def test_region_holds_every_sampled_coordinate():
    rng = np.random.default_rng(0)
    patch = (9, 16, 12)
    for _ in range(20):
        a = spatial_affine(rng.uniform(-0.5, 0.5, 3), rng.uniform(0.7, 1.4), False)
        region = np.array(region_size(a[None], patch))
        half = (np.array(patch) - 1) / 2
        corners = np.array(np.meshgrid(*[(-h, h) for h in half], indexing="ij")).reshape(3, -1).T
        src = corners @ a.T + (region - 1) / 2
        assert (src >= 0).all() and (src <= region - 1).all()
        assert ((region - np.array(patch)) % 2 == 0).all()
    assert region_size(np.zeros((0, 3, 3)), patch) == patch


def _single(name: str, **extra) -> AugmentationParams:
    """Parameters with only one intensity transform switched on, at probability 1."""
    off = dict(p_rotation=0.0, p_scale=0.0, p_noise=0.0, p_blur=0.0, p_brightness=0.0, p_contrast=0.0,
               p_low_res=0.0, p_gamma_inverted=0.0, p_gamma=0.0, mirror_axes=())
    off[name] = 1.0
    off.update(extra)
    return AugmentationParams(**off)


@pytest.mark.parametrize("name", ["p_noise", "p_blur", "p_brightness", "p_contrast", "p_low_res",
                                  "p_gamma_inverted", "p_gamma"])
def test_intensity_transforms_match_in_mean_and_spread(name):
    patch = (8, 16, 16)
    params = _single(name)
    base = (_smooth(patch, seed=1) * 0.5 + 0.2)[None, None]
    base = np.concatenate([base, base * 2 - 1], axis=1)  # two channels
    seg = np.zeros((1, 1) + patch, np.float32)
    transforms = build_transforms(patch, params)
    aug = DeviceAugmenter(patch)
    rng = np.random.default_rng(0)
    np.random.seed(0)
    stats = {"bg": [], "dev": []}
    for _ in range(120):
        ref = transforms(data=base.copy(), seg=seg.copy())["data"]
        draw = draw_batch(rng, 1, 2, patch, params)
        ours = aug(torch.from_numpy(base.copy()), torch.zeros((1, 1) + patch, dtype=torch.int8), draw)[0].numpy()
        for key, out in (("bg", ref), ("dev", ours)):
            stats[key].append([out.mean(), out.std(), np.abs(out - base).mean()])
    bg, dev = np.array(stats["bg"]), np.array(stats["dev"])
    change = max(bg[:, 2].mean(), 1e-3)
    assert abs(bg[:, 0].mean() - dev[:, 0].mean()) < 0.1 * change + 0.01  # same mean
    assert abs(bg[:, 1].mean() - dev[:, 1].mean()) < 0.15 * change + 0.01  # same spread
    assert abs(bg[:, 2].mean() - dev[:, 2].mean()) < 0.2 * change + 0.005  # same size of change
    assert dev[:, 2].mean() > 0  # the transform did something


def test_drawn_probabilities_follow_the_parameters():
    rng = np.random.default_rng(0)
    draws = [draw_batch(rng, 4, 2, (16, 32, 32)) for _ in range(300)]
    frac = lambda f: np.mean([f(d) for d in draws], axis=0).mean()  # noqa: E731
    p = AugmentationParams()
    assert abs(frac(lambda d: d.spatial) - (1 - (1 - p.p_rotation) * (1 - p.p_scale))) < 0.04
    assert abs(frac(lambda d: d.noise_std > 0) - p.p_noise) < 0.03
    assert abs(frac(lambda d: d.gamma[:, 0] > 0) - p.p_gamma) < 0.04
    assert abs(frac(lambda d: d.blur_sigma > 0) - p.p_blur * 0.5) < 0.03
    assert abs(frac(lambda d: d.mirror) - 0.5) < 0.03
    two_d = draw_batch(np.random.default_rng(1), 64, 1, (4, 32, 32))
    sel = two_d.affine[two_d.spatial]
    assert len(sel) and np.allclose(sel[:, 0], [1, 0, 0])  # 2D-style: the first axis never moves


def _cases():
    rng = np.random.default_rng(0)
    out = []
    for i in range(2):
        seg = np.zeros((1, 14, 24, 24), np.int8)
        seg[0, 4:9, 6:14, 6:14] = 1
        seg[0, 6:8, 9:11, 9:11] = 2
        data = (rng.normal(size=(2,) + seg.shape[1:]) + seg).astype(np.float32)
        out.append(CaseData(f"c{i}", data, seg, {c: np.argwhere(seg[0] == c) for c in (1, 2)}))
    return out


def test_device_batches_are_valid_and_reproducible():
    cases, patch = _cases(), (8, 16, 16)
    a = make_batch_iterator(cases, patch, 3, seed=5, augmentation="device")
    b = make_batch_iterator(cases, patch, 3, seed=5, augmentation="device")
    c = make_batch_iterator(cases, patch, 3, seed=6, augmentation="device")
    for _ in range(6):
        ba, bb, bc = next(a), next(b), next(c)
        assert ba["data"].shape == (3, 2) + patch and ba["data"].dtype == torch.float32
        assert ba["target"].shape == (3, 1) + patch and ba["target"].dtype == torch.int64
        assert set(ba["target"].unique().tolist()) <= {0, 1, 2}
        assert torch.isfinite(ba["data"]).all()
        assert torch.equal(ba["data"], bb["data"]) and torch.equal(ba["target"], bb["target"])
    assert not torch.equal(ba["data"], bc["data"])


def test_without_augmentation_both_backends_cut_the_same_patch():
    cases, patch = _cases(), (8, 16, 16)
    dev = make_batch_iterator(cases, patch, 2, seed=1, augment=False, augmentation="device")
    ref = make_batch_iterator(cases, patch, 2, seed=1, augment=False, augmentation="batchgenerators")
    for _ in range(3):
        x, y = next(dev), next(ref)
        assert torch.equal(x["data"], y["data"]) and torch.equal(x["target"], y["target"])


def test_backend_choice_and_default():
    assert default_augmentation("cuda") == "device"
    assert default_augmentation(torch.device("cpu")) in ("device", "batchgenerators")
    assert check_augmentation("batchgenerators") == "batchgenerators"
    with pytest.raises(InputError, match="--augmentation"):
        check_augmentation("gpu")
    with pytest.raises(InputError, match="--augmentation"):
        make_batch_iterator(_cases(), (8, 16, 16), 1, augmentation="kornia")


def test_trainer_options_reject_an_unknown_backend():
    from c2fnas_auto.training.trainer import TrainerOptions

    with pytest.raises(InputError, match="--augmentation"):
        TrainerOptions(augmentation="cupy").check()


def test_cpu_thread_limit_is_restored():
    before = torch.get_num_threads()
    with _cpu_threads(torch.device("cpu"), 1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with _cpu_threads(torch.device("meta"), 1):  # not a CPU tensor: untouched
        assert torch.get_num_threads() == before


def test_fit_trains_with_either_backend(tmp_path):
    from c2fnas_auto.training import api

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv3d(2, 3, 3, padding=1)

        def forward(self, x):
            return self.conv(x)

    class Plans:
        patch_size, batch_size = [8, 16, 16], 2

    from c2fnas_auto.utils.io import atomic_save_npy, atomic_write_json

    data = tmp_path / "data"
    data.mkdir()
    for case in _cases():
        atomic_save_npy(data / f"{case.case_id}.npy", case.data)
        atomic_save_npy(data / f"{case.case_id}_seg.npy", case.seg)
        atomic_write_json(data / f"{case.case_id}.json", {
            "case_id": case.case_id, "class_locations": {str(k): v.tolist() for k, v in case.class_locations.items()}})
    for backend in ("device", "batchgenerators", None):
        losses = api.fit(Tiny(), Plans(), tmp_path, ["c0", "c1"], epochs=1,
                         iters_per_epoch=2, device="cpu", augmentation=backend)
        assert len(losses) == 1 and np.isfinite(losses[0])


def test_rarest_rule_centres_forced_samples_on_the_smallest_class():
    from c2fnas_auto.training.dataloader import PatchSampler

    case = _cases()[0]  # class 2 (8 voxels) lies inside class 1
    rng = np.random.default_rng(0)
    rare = PatchSampler([case], (2, 2, 2), 1, oversample_foreground=1.0, foreground_classes="rarest")
    uniform = PatchSampler([case], (2, 2, 2), 1, oversample_foreground=1.0)
    hits_rare = sum((rare.sample(rng)["seg"] == 2).any() for _ in range(40))
    hits_uniform = sum((uniform.sample(rng)["seg"] == 2).any() for _ in range(40))
    assert hits_rare == 40 and hits_uniform < 35
    with pytest.raises(ValueError, match="foreground_classes"):
        PatchSampler([case], (2, 2, 2), 1, foreground_classes="largest")


def test_trainer_options_reject_an_unknown_foreground_rule():
    from c2fnas_auto.training.trainer import TrainerOptions

    with pytest.raises(InputError, match="--foreground-classes"):
        TrainerOptions(foreground_classes="largest").check()
