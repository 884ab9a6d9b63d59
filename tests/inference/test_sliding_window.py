"""Sliding-window prediction: tiling, Gaussian normalisation, padding, TTA and step size."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from c2fnas_auto.inference.sliding_window import (gaussian_importance_map, mirror_combinations,
                                                  sliding_window_predict, tile_starts)


class Identity(nn.Module):
    """Logits equal to the input: any correct weighting must give the input back."""

    def forward(self, x):
        return x * 1.0


def test_tile_starts_cover_and_touch_border():
    for size, patch, step in ((100, 32, 0.5), (33, 32, 0.5), (32, 32, 0.5), (70, 16, 0.25)):
        starts = tile_starts((size,), (patch,), step)[0]
        assert starts[0] == 0 and starts[-1] == size - patch
        assert all(b - a <= patch * step + 1e-9 for a, b in zip(starts, starts[1:]))
        assert all(b > a for a, b in zip(starts, starts[1:]))


def test_gaussian_map():
    g = gaussian_importance_map((9, 16, 16))
    assert g.shape == (9, 16, 16)
    assert float(g.max()) == pytest.approx(1.0, abs=0.02) and float(g.min()) > 0
    assert torch.allclose(g, torch.flip(g, (0, 1, 2)))
    assert len(mirror_combinations((0, 1, 2))) == 8 and mirror_combinations(None) == [()]


@pytest.mark.parametrize("mirror_axes,gaussian,tile_batch", [((0, 1, 2), True, 1), (None, True, 3), ((1,), False, 2)])
def test_identity_network_returns_input(mirror_axes, gaussian, tile_batch):
    x = torch.randn(3, 13, 21, 18)
    y = sliding_window_predict(Identity(), x, (8, 8, 8), 3, mirror_axes=mirror_axes, gaussian=gaussian,
                               tile_batch_size=tile_batch)
    assert y.shape == x.shape and y.dtype == torch.float32
    assert torch.allclose(y, x, atol=1e-5)


def test_smaller_than_patch_and_numpy_input():
    x = np.random.default_rng(0).standard_normal((2, 5, 20, 6)).astype(np.float32)
    y = sliding_window_predict(Identity(), x, (8, 16, 16), 2, mirror_axes=(0, 1, 2))
    assert y.shape == (2, 5, 20, 6)
    assert np.allclose(y.numpy(), x, atol=1e-5)


def test_network_mode_restored():
    net = nn.Conv3d(1, 2, 1)
    net.train()
    sliding_window_predict(net, torch.zeros(1, 4, 4, 4), (4, 4, 4), 2, mirror_axes=None)
    assert net.training


def _trained_tiny_net(seed: int = 0):
    """A 2-layer conv net trained for a few steps to segment bright blobs: not flip-symmetric,
    but good enough that TTA and step size should change little."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv3d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv3d(8, 2, 3, padding=1))
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(60):
        img = torch.randn(2, 1, 12, 12, 12, generator=gen)
        img = torch.nn.functional.avg_pool3d(img, 3, 1, 1) * 3
        target = (img[:, 0] > 0.3).long()
        loss = nn.functional.cross_entropy(net(img), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net


def test_tta_and_step_size_change_result_only_slightly():
    torch.set_num_threads(1)
    net = _trained_tiny_net()
    gen = torch.Generator().manual_seed(1)
    img = torch.nn.functional.avg_pool3d(torch.randn(1, 1, 20, 30, 26, generator=gen), 3, 1, 1)[0] * 3
    truth = (img[0] > 0.3).long()
    base = sliding_window_predict(net, img, (12, 12, 12), 2, step_size=0.5, mirror_axes=None)
    tta = sliding_window_predict(net, img, (12, 12, 12), 2, step_size=0.5, mirror_axes=(0, 1, 2))
    fine = sliding_window_predict(net, img, (12, 12, 12), 2, step_size=0.25, mirror_axes=None)
    assert (base.argmax(0) == truth).float().mean() > 0.9  # the net has learned the task
    for other in (tta, fine):
        assert not torch.equal(other, base)
        p0, p1 = torch.softmax(base, 0), torch.softmax(other, 0)
        assert (p0 - p1).abs().mean() < 0.05
        assert (base.argmax(0) == other.argmax(0)).float().mean() > 0.97


class PatchColumn(nn.Module):
    """Logits = the x position inside the tile (0..patch-1): overlapping tiles disagree, so the
    blend shows which weighting was used."""

    def forward(self, x):
        col = torch.arange(x.shape[-1], dtype=torch.float32)
        return col.expand(x.shape[0], 1, *x.shape[2:]).clone()


@pytest.mark.parametrize("gaussian", [True, False])
def test_overlap_blend_follows_the_weighting(gaussian):
    """Tiles start at x = 0 and 8 (patch 16, step 0.5). With the Gaussian (sigma = patch / 8) a
    voxel in the overlap leans to the tile whose centre is nearer; without it, a plain mean."""
    y = sliding_window_predict(PatchColumn(), torch.zeros(1, 8, 8, 24), (8, 8, 16), 1, step_size=0.5,
                               mirror_axes=None, gaussian=gaussian)[0, 0, 0].numpy()
    sigma = 16 / 8
    expected = []
    for x in range(24):
        positions = [x - s for s in (0, 8) if 0 <= x - s < 16]
        w = [np.exp(-0.5 * ((p - 7.5) / sigma) ** 2) if gaussian else 1.0 for p in positions]
        expected.append(sum(wi * p for wi, p in zip(w, positions)) / sum(w))
    assert np.allclose(y, expected, atol=1e-4)
    plain_mean_at_12 = (12 + 4) / 2  # tile 0 sees x=12 at position 12, tile 8 at position 4
    assert (abs(y[12] - plain_mean_at_12) > 1) == gaussian
