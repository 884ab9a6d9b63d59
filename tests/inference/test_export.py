"""Export back to the input geometry: oblique synthetic images and the real CT.

Perfect probabilities are built from the preprocessed label, exported, and compared with
the original label: the geometry must be identical and the labels nearly so (the only
loss is the resampling to the target spacing and back)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import SimpleITK as sitk

from c2fnas_auto.data.image_io import Geometry, read_segmentation, write_image, write_segmentation
from c2fnas_auto.evaluation.metrics import dice
from c2fnas_auto.inference.export import export_prediction
from c2fnas_auto.preprocessing.preprocessor import preprocess_case


def _rotation(ax: float, az: float) -> tuple[float, ...]:
    cx, sx, cz, sz = np.cos(ax), np.sin(ax), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return tuple((rz @ rx).ravel())


def _oblique_case(folder, shape=(18, 26, 30)):
    """Image with zero margins (so cropping happens), ellipsoid label 1 with a label-2 core."""
    geo = Geometry(spacing=(0.8, 1.3, 2.5), origin=(12.5, -40.25, 7.75), direction=_rotation(0.35, 0.6))
    z, y, x = np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij")
    r = ((z - 9) / 6) ** 2 + ((y - 13) / 8) ** 2 + ((x - 14) / 9) ** 2
    seg = np.zeros(shape, dtype=np.uint8)
    seg[r < 1] = 1
    seg[r < 0.3] = 2
    rng = np.random.default_rng(0)
    img = np.zeros(shape, dtype=np.float32)
    img[2:17, 3:24, 2:28] = 40 + 5 * rng.standard_normal((15, 21, 26))
    img += 100 * seg
    write_image(img, geo, folder / "img.nii.gz")
    write_segmentation(seg, geo, folder / "seg.nii.gz")
    return folder / "img.nii.gz", folder / "seg.nii.gz", geo, seg


def _perfect_probabilities(seg_pre: np.ndarray, num_classes: int) -> np.ndarray:
    return np.stack([(seg_pre[0] == k) for k in range(num_classes)]).astype(np.float32)


def _md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _transposed_plans(plans, forward, target_spacing_orig_order):
    p = plans.copy()
    p.transpose_forward = list(forward)
    p.transpose_backward = [int(i) for i in np.argsort(forward)]
    p.target_spacing = [float(target_spacing_orig_order[a]) for a in forward]
    return p


@pytest.mark.parametrize("forward,anisotropic", [((0, 1, 2), False), ((2, 0, 1), False), ((1, 2, 0), True)])
def test_oblique_round_trip(tiny_task, tmp_path, forward, anisotropic):
    img_file, seg_file, geo, seg = _oblique_case(tmp_path)
    before = (_md5(img_file), _md5(seg_file))
    plans = _transposed_plans(tiny_task.plans, forward, (2.0, 1.0, 0.6))  # numpy (z, y, x) mm, finer than input
    plans.resampling["anisotropic"] = anisotropic
    data, seg_pre, props = preprocess_case([img_file], plans, seg_file)
    assert props["crop_bbox"] != [[0, n] for n in seg.shape]  # the zero margin was cropped
    out = tmp_path / "out" / "case.nii.gz"
    written = export_prediction(_perfect_probabilities(seg_pre, plans.num_classes), props, plans, out,
                                save_probabilities=True)
    pred, pred_geo = read_segmentation(out)
    # the input file's spacing and origin exactly; the direction up to NIfTI's float32
    # quaternion encoding (re-writing the input itself moves it by ~1e-8 as well)
    in_geo = Geometry.from_sitk(sitk.ReadImage(str(img_file)))
    assert pred_geo.spacing == in_geo.spacing and pred_geo.origin == in_geo.origin
    assert np.allclose(pred_geo.direction, in_geo.direction, rtol=0, atol=1e-6)
    assert not np.allclose(np.reshape(in_geo.direction, (3, 3)), np.eye(3))
    img_out = sitk.ReadImage(str(out))
    assert img_out.GetSize() == tuple(reversed(seg.shape))
    assert np.array_equal(pred, written)
    for label in (1, 2):
        assert dice(pred, seg, label) > 0.98
    probs = np.load(tmp_path / "out" / "case.npz")["probabilities"]
    assert probs.shape == (plans.num_classes, *seg.shape)
    assert np.allclose(probs.sum(0), 1.0, atol=1e-4)
    assert (tmp_path / "out" / "case.json").is_file()
    assert before == (_md5(img_file), _md5(seg_file))  # inputs untouched


def test_round_trip_at_input_spacing_is_exact(tiny_task, tmp_path):
    img_file, seg_file, geo, seg = _oblique_case(tmp_path)
    plans = _transposed_plans(tiny_task.plans, (2, 0, 1), (2.5, 1.3, 0.8))  # the input's own spacing
    data, seg_pre, props = preprocess_case([img_file], plans, seg_file)
    pred = export_prediction(_perfect_probabilities(seg_pre, plans.num_classes), props, plans, tmp_path / "o.nii.gz")
    assert np.array_equal(pred, seg)


def test_real_ct_round_trip(tiny_task, shared_data, tmp_path):
    ct = shared_data / "example_ct_sm.nii.gz"
    full, geo = read_segmentation(shared_data / "example_seg.nii.gz")
    seg = np.zeros_like(full, dtype=np.uint8)
    seg[full == 5] = 1  # liver
    seg[full == 1] = 2  # spleen
    seg_file = tmp_path / "seg.nii.gz"
    write_segmentation(seg, geo, seg_file)
    plans = _transposed_plans(tiny_task.plans, (0, 1, 2), (2.5, 4.0, 4.0))
    data, seg_pre, props = preprocess_case([ct], plans, seg_file)
    out = tmp_path / "out" / "ct.nii.gz"
    export_prediction(_perfect_probabilities(seg_pre, plans.num_classes), props, plans, out)
    pred, pred_geo = read_segmentation(out)
    ref_img = sitk.ReadImage(str(ct))
    assert pred_geo == Geometry.from_sitk(ref_img)
    assert pred.shape == seg.shape
    assert dice(pred, seg, 1) > 0.95 and dice(pred, seg, 2) > 0.9


def test_background_outside_crop_and_postprocessing(tiny_task, tmp_path):
    img_file, seg_file, geo, seg = _oblique_case(tmp_path)
    plans = tiny_task.plans
    data, seg_pre, props = preprocess_case([img_file], plans, seg_file)
    probs = _perfect_probabilities(seg_pre, plans.num_classes)
    # an island of label 1 far from the organ, inside the crop
    probs[:, 0, 0, 0] = 0
    probs[1, 0, 0, 0] = 1
    kept = export_prediction(probs, props, plans, tmp_path / "a.nii.gz")
    cleaned = export_prediction(probs, props, plans, tmp_path / "b.nii.gz",
                                postprocessing={"largest_component_labels": [1]})
    assert (kept == 1).sum() > (cleaned == 1).sum()
    (z0, z1), (y0, y1), (x0, x1) = props["crop_bbox"]
    outside = np.ones(seg.shape, dtype=bool)
    outside[z0:z1, y0:y1, x0:x1] = False
    assert outside.any() and not kept[outside].any()
