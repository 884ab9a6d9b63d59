"""Metric figures on hand-built masks, and agreement with MONAI where it is installed."""

from __future__ import annotations

import math

import numpy as np
import pytest

from c2fnas_auto.evaluation.metrics import confusion, dice, normalized_surface_dice


def _cubes(shift: int = 1, shape=(20, 20, 20)):
    ref = np.zeros(shape, dtype=np.int16)
    pred = np.zeros(shape, dtype=np.int16)
    ref[5:15, 5:15, 5:15] = 1
    pred[5:15, 5:15, 5 + shift:15 + shift] = 1
    return pred, ref


def test_dice_of_shifted_cubes():
    pred, ref = _cubes(1)
    assert dice(pred, ref, 1) == pytest.approx(2 * 900 / 2000)
    c = confusion(pred, ref, 1)
    assert (c.tp, c.fp, c.fn, c.n_ref, c.n_pred) == (900, 100, 100, 1000, 1000)


def test_dice_empty_rules():
    empty = np.zeros((4, 4, 4), dtype=np.int16)
    full = empty.copy()
    full[1:3, 1:3, 1:3] = 1
    assert math.isnan(dice(empty, empty, 1))
    assert dice(full, empty, 1) == 0.0
    assert dice(empty, full, 1) == 0.0
    assert math.isnan(normalized_surface_dice(empty, empty, 1, (1, 1, 1), 1.0))
    assert normalized_surface_dice(full, empty, 1, (1, 1, 1), 1.0) == 0.0
    assert normalized_surface_dice(empty, full, 1, (1, 1, 1), 1.0) == 0.0


def test_nsd_of_shifted_cubes_known_values():
    # 10^3 cubes shifted by one voxel along x: each surface has 488 voxels; 100 on the
    # moved face and 64 inside the opposite face are 1 voxel away from the other surface.
    pred, ref = _cubes(1)
    expected = 2 * (488 - 100 - 64) / (2 * 488)
    assert normalized_surface_dice(pred, ref, 1, (1, 1, 1), 0.5) == pytest.approx(expected)
    assert normalized_surface_dice(pred, ref, 1, (1, 1, 1), 1.0) == pytest.approx(1.0)
    # spacing-aware: 2 mm along x makes the gap 2 mm, but the outer ring of the inner
    # face (8x8 minus 6x6 = 28 voxels) is then 1 mm from a side face of the other cube
    assert normalized_surface_dice(pred, ref, 1, (1, 1, 2), 1.5) == pytest.approx((488 - 100 - 36) / 488)
    assert normalized_surface_dice(pred, ref, 1, (1, 1, 2), 2.0) == pytest.approx(1.0)
    assert normalized_surface_dice(ref, ref, 1, (3, 1, 1), 0.0) == pytest.approx(1.0)


def test_nsd_independent_of_crop_and_label_values():
    pred, ref = _cubes(2, shape=(30, 30, 30))
    big_pred = np.pad(pred, 10) * 3
    big_ref = np.pad(ref, 10) * 3
    a = normalized_surface_dice(pred, ref, 1, (1, 2, 1), 1.0)
    b = normalized_surface_dice(big_pred, big_ref, 3, (1, 2, 1), 1.0)
    assert a == pytest.approx(b)
    assert 0.0 < a < 1.0


def test_against_monai():
    monai_metrics = pytest.importorskip("monai.metrics")
    import torch

    rng = np.random.default_rng(0)
    ref = np.zeros((24, 24, 24), dtype=np.int16)
    ref[4:18, 6:20, 5:17] = 1
    ref[10:14, 8:12, 8:12] = 2
    pred = ref.copy()
    noise = rng.random(ref.shape) < 0.05
    pred[noise] = rng.integers(0, 3, size=int(noise.sum()))

    def onehot(a):
        return torch.from_numpy(np.stack([a == k for k in range(3)])[None].astype(np.float32))

    spacing = (2.0, 1.0, 1.5)
    m_dice = monai_metrics.compute_dice(onehot(pred), onehot(ref), include_background=False)[0]
    m_nsd = monai_metrics.compute_surface_dice(onehot(pred), onehot(ref), class_thresholds=[2.0, 2.0],
                                               include_background=False, spacing=spacing)[0]
    for k in (1, 2):
        assert dice(pred, ref, k) == pytest.approx(float(m_dice[k - 1]), abs=1e-5)
        assert normalized_surface_dice(pred, ref, k, spacing, 2.0) == pytest.approx(float(m_nsd[k - 1]), abs=1e-5)
