"""Cropping, resampling and normalization on small arrays."""

from __future__ import annotations

import numpy as np
import pytest

from c2fnas_auto.planning.plans import default_resampling
from c2fnas_auto.preprocessing.cropping import bbox_of_mask, crop_to_nonzero
from c2fnas_auto.preprocessing.normalization import normalize
from c2fnas_auto.preprocessing.resampling import compute_new_shape, resample_to_shape


def test_crop_to_nonzero_box_is_half_open_and_covers_data():
    data = np.zeros((2, 10, 12, 14), np.float32)
    data[0, 2:5, 3:9, 4:6] = 1
    data[1, 6, 1, 13] = -2
    cropped, seg, bbox, mask = crop_to_nonzero(data, np.ones((1, 10, 12, 14), np.int8))
    assert bbox == [[2, 7], [1, 9], [4, 14]]
    assert cropped.shape == (2, 5, 8, 10) and seg.shape == (1, 5, 8, 10) and mask.shape == (5, 8, 10)
    assert np.abs(cropped).sum() == np.abs(data).sum()
    assert bbox_of_mask(np.zeros((3, 4, 5), bool)) == [[0, 3], [0, 4], [0, 5]]


@pytest.mark.parametrize("anisotropic", [False, True])
def test_resampling_keeps_label_set(anisotropic):
    seg = np.zeros((1, 12, 40, 40), np.int16)
    seg[0, 2:10, 5:35, 5:35] = 1
    seg[0, 4:8, 12:20, 12:20] = 2
    seg[0, 5:8, 24:32, 24:32] = 3
    settings = default_resampling(anisotropic)
    for shape in [(36, 20, 20), (6, 64, 64), (12, 40, 40)]:
        out = resample_to_shape(seg, shape, True, settings, low_res_axis=0)
        assert out.shape == (1, *shape) and out.dtype == np.int8
        assert set(np.unique(out)) == {0, 1, 2, 3}
    # up then down returns (almost) the original labels
    back = resample_to_shape(resample_to_shape(seg, (24, 80, 80), True, settings, 0), (12, 40, 40), True,
                             settings, 0)
    assert (back == seg).mean() > 0.98


def test_anisotropic_resampling_uses_nearest_out_of_plane():
    img = np.zeros((1, 4, 8, 8), np.float32)
    img[0, 1] = 10.0
    out = resample_to_shape(img, (8, 8, 8), False, default_resampling(True), low_res_axis=0)
    # nearest along z: only the copies of slice 1 are 10, no values in between
    assert set(np.round(np.unique(out), 4)) == {0.0, 10.0}
    iso = resample_to_shape(img, (8, 8, 8), False, default_resampling(True), low_res_axis=None)
    assert len(np.unique(np.round(iso, 4))) > 2
    probs = np.random.default_rng(0).random((2, 4, 8, 8)).astype(np.float32)
    linear = resample_to_shape(probs, (9, 15, 15), False, default_resampling(False), order=1)
    assert linear.min() >= 0 and linear.max() <= 1


def test_compute_new_shape():
    assert compute_new_shape([10, 100, 100], [5.0, 0.8, 0.8], [2.5, 1.0, 1.0]) == [20, 80, 80]


def test_normalization_schemes():
    rng = np.random.default_rng(0)
    ct = rng.normal(50, 300, (1, 8, 8, 8)).astype(np.float32)
    out = normalize(ct, [{"scheme": "CT", "use_nonzero_mask": False, "mean": 50.0, "std": 25.0,
                          "lower": -100.0, "upper": 200.0}])
    assert out.min() == pytest.approx((-100 - 50) / 25) and out.max() == pytest.approx((200 - 50) / 25)
    mr = np.zeros((1, 8, 8, 8), np.float32)
    mr[0, 2:6, 2:6, 2:6] = rng.normal(500, 80, (4, 4, 4))
    mask = mr[0] != 0
    z = normalize(mr, [{"scheme": "zscore", "use_nonzero_mask": True}], mask)[0]
    assert z[mask].mean() == pytest.approx(0, abs=1e-4) and z[mask].std() == pytest.approx(1, abs=1e-3)
    assert np.all(z[~mask] == 0)
    z2 = normalize(mr, [{"scheme": "zscore", "use_nonzero_mask": False}], mask)[0]
    assert z2.mean() == pytest.approx(0, abs=1e-4) and z2[~mask].min() < 0


@pytest.mark.parametrize("spacing,target,axis", [
    ([5.0, 0.7, 0.7], [1.5, 0.7, 0.7], 0),    # thick-slice case: its own coarse axis
    ([0.7, 0.7, 5.0], [0.7, 0.7, 0.7], 2),    # ... wherever that axis lies
    ([0.7, 0.7, 0.7], [1.5, 0.7, 0.7], None),  # thin case to a moderately coarse target: 3D
    ([0.7, 0.7, 0.7], [0.7, 2.0, 0.7], None),
    ([1.0, 1.0, 1.0], [4.0, 1.0, 1.0], 0),    # isotropic case to a thick-slice grid: the target's axis
    ([4.0, 4.0, 1.0], [1.0, 1.0, 1.0], None),  # two equally coarse axes: no single through-plane axis
    ([3.0, 1.0, 1.0], [3.0, 1.0, 1.0], None),  # ratio exactly 3 is not above the threshold
])
def test_separate_axis_is_decided_from_the_case(spacing, target, axis):
    from c2fnas_auto.preprocessing.resampling import separate_axis

    assert separate_axis(spacing, target, 3.0) == axis


def test_case_low_res_axis_reads_the_record_and_falls_back_for_old_cases():
    from c2fnas_auto.preprocessing.resampling import case_low_res_axis

    assert case_low_res_axis({"resampling_low_res_axis": 2}, default_resampling(False)) == 2
    assert case_low_res_axis({"resampling_low_res_axis": None}, default_resampling(True)) is None
    assert case_low_res_axis({}, default_resampling(True)) == 0  # preprocessed before the per-case record
    assert case_low_res_axis({}, default_resampling(False)) is None
