"""preprocess_case / preprocess_dataset / plan_and_preprocess end to end on tiny data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from c2fnas_auto.errors import C2FNASError
from c2fnas_auto.planning.pipeline import plan_and_preprocess
from c2fnas_auto.planning.plans import Plans
from c2fnas_auto.preprocessing.preprocessor import preprocess_case
from c2fnas_auto.preprocessing.resampling import resample_to_shape
from c2fnas_auto.preprocessing.storage import list_cases, load_case

PROPERTY_KEYS = {"case_id", "sitk_spacing", "sitk_origin", "sitk_direction", "shape_original", "spacing_original",
                 "crop_bbox", "shape_after_crop", "shape_after_resampling", "class_locations"}


@pytest.fixture
def roots(tmp_path, monkeypatch):
    for name in ("raw", "preprocessed", "results"):
        monkeypatch.setenv(f"C2FNAS_{name}", str(tmp_path / name))
    return tmp_path


def test_tiny_task_preprocessed(tiny_task):
    plans = Plans.load(tiny_task.preprocessed_dir / "plans.json")
    assert plans.to_dict() == tiny_task.plans.to_dict()
    cases = list_cases(tiny_task.preprocessed_dir)
    assert len(cases) == 8
    data, seg, props = load_case(tiny_task.preprocessed_dir, cases[0])
    assert PROPERTY_KEYS <= set(props)
    assert data.dtype == np.float32 and data.ndim == 4 and data.shape[0] == 1
    assert seg.dtype == np.int8 and seg.shape == (1, *data.shape[1:])
    assert list(data.shape[1:]) == props["shape_after_resampling"]
    assert set(np.unique(seg)) <= set(plans.labels.values())
    for label, locs in props["class_locations"].items():
        locs = np.asarray(locs)
        if len(locs):
            assert np.all(seg[0][tuple(locs.T)] == int(label))
    # CT normalization: clipped then z-scored, so bounded by the clip window
    norm = plans.normalization[0]
    assert data.max() <= (norm["upper"] - norm["mean"]) / norm["std"] + 1e-3


def _mtimes(folder):
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.iterdir())}


def test_rerun_skips_finished_cases(copy_task):
    data_dir = copy_task.preprocessed_dir / "data"
    before = _mtimes(data_dir)
    plan_and_preprocess(98, gpu_memory_gb=0.25, base_channels=4, num_workers=1)
    assert _mtimes(data_dir) == before
    victim = list_cases(copy_task.preprocessed_dir)[3]
    (data_dir / f"{victim}.json").unlink()
    (data_dir / f"{victim}.npy").write_bytes(b"half-written")
    plan_and_preprocess(98, gpu_memory_gb=0.25, base_channels=4, num_workers=1)
    after = _mtimes(data_dir)
    changed = {name for name in after if after[name] != before.get(name)}
    assert changed == {f"{victim}.json", f"{victim}.npy", f"{victim}_seg.npy"}
    assert load_case(copy_task.preprocessed_dir, victim)[0].shape[0] == 1


def test_changed_preprocessing_settings_redo_cases(copy_task):
    data_dir = copy_task.preprocessed_dir / "data"
    plans = Plans.load(copy_task.preprocessed_dir / "plans.json")
    plans.normalization = [{"scheme": "zscore", "use_nonzero_mask": False}]
    from c2fnas_auto.preprocessing.preprocessor import preprocess_dataset

    counts = preprocess_dataset(copy_task.task_name, plans, num_workers=1)
    assert counts == {"processed": 8, "skipped": 0}
    data, _, _ = load_case(data_dir, list_cases(data_dir)[0])
    assert abs(float(data.mean())) < 1e-3


def _write_msd_task(raw, name, cases):
    """A minimal MSD task from (image zyx, seg zyx, sitk spacing xyz) tuples."""
    folder = raw / name
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    training = []
    for i, (img, seg, spacing) in enumerate(cases):
        for sub, arr in (("imagesTr", img), ("labelsTr", seg)):
            im = sitk.GetImageFromArray(arr)
            im.SetSpacing(spacing)
            im.SetOrigin((10.0, -5.0, 3.0))
            sitk.WriteImage(im, str(folder / sub / f"case_{i}.nii.gz"))
        training.append({"image": f"./imagesTr/case_{i}.nii.gz", "label": f"./labelsTr/case_{i}.nii.gz"})
    meta = {"name": name, "modality": {"0": "CT"}, "labels": {"0": "background", "1": "organ", "2": "lesion"},
            "numTraining": len(cases), "numTest": 0, "training": training, "test": []}
    (folder / "dataset.json").write_text(json.dumps(meta))
    return folder


def test_coarse_x_axis_is_transposed_and_round_trips(roots):
    rng = np.random.default_rng(1)
    cases = []
    for i, xs in enumerate([4.0, 4.0, 3.0]):
        img = rng.normal(40, 10, (40, 30, 8)).astype(np.int16) + 100
        seg = np.zeros((40, 30, 8), np.uint8)
        seg[8:30, 6:24, 2:7] = 1
        seg[14:22, 10:18, 3:6] = 2
        cases.append((img, seg, (xs, 0.8, 0.8)))  # SimpleITK (x, y, z): x is the coarse axis
    _write_msd_task(roots / "raw", "Task96_Coarse", cases)
    plans = plan_and_preprocess(96, gpu_memory_gb=0.25, base_channels=4, num_workers=2, progress=False)
    assert plans.transpose_forward == [2, 0, 1] and plans.transpose_backward == [1, 2, 0]
    assert plans.target_spacing[0] == pytest.approx(np.percentile([4.0, 4.0, 3.0], 10))
    pre = roots / "preprocessed" / "Task96_Coarse"
    assert list_cases(pre) == ["case_0", "case_1", "case_2"]
    for case_id, (img, seg, _) in zip(list_cases(pre), cases):
        data, pseg, props = load_case(pre, case_id, mmap=False)
        assert props["shape_original"] == [40, 30, 8] and props["spacing_original"][2] in (4.0, 3.0)
        assert pseg.shape[1] < pseg.shape[2]  # coarse axis first
        assert set(np.unique(pseg)) == {0, 1, 2}
        # back to the cropped original grid, as export does
        back = resample_to_shape(pseg, [props["shape_after_crop"][a] for a in plans.transpose_forward], True,
                                 plans.resampling, low_res_axis=0)[0].transpose(plans.transpose_backward)
        (z0, z1), (y0, y1), (x0, x1) = props["crop_bbox"]
        assert (back == seg[z0:z1, y0:y1, x0:x1]).mean() > 0.97
        # a prediction input (no label) gets exactly the same data
        same, none, _ = preprocess_case([roots / "raw" / "Task96_Coarse" / "imagesTr" / f"{case_id}.nii.gz"], plans)
        assert none is None and np.array_equal(same, data)


def test_nnunet_layout_and_two_channels(roots):
    from c2fnas_auto.data.synthetic import make_synthetic_task

    make_synthetic_task(roots / "raw", task_id=94, name="Twochan", num_train=3, num_test=0, shape=(12, 24, 24),
                        spacing=(2.0, 1.0, 1.0), layout="nnunet", modality="MR", channels=2, seed=3)
    plans = plan_and_preprocess(94, gpu_memory_gb=0.25, base_channels=4)
    assert plans.num_channels == 2 and [n["scheme"] for n in plans.normalization] == ["zscore", "zscore"]
    pre = roots / "preprocessed" / plans.task_name
    assert len(list_cases(pre)) == 3
    data, seg, _ = load_case(pre, list_cases(pre)[0])
    assert data.shape[0] == 2 and seg.shape[1:] == data.shape[1:]


def test_invalid_dataset_writes_nothing(roots):
    img = np.full((8, 16, 16), 50, np.int16)
    seg = np.zeros((8, 16, 16), np.uint8)
    seg[2:5, 4:9, 4:9] = 7  # not declared in dataset.json
    _write_msd_task(roots / "raw", "Task93_Bad", [(img, seg, (1.0, 1.0, 1.0))])
    with pytest.raises(C2FNASError, match="case_0"):
        plan_and_preprocess(93, gpu_memory_gb=0.25, base_channels=4)
    assert not (roots / "preprocessed" / "Task93_Bad").exists()


def test_real_ct_geometry_kept(shared_data, tiny_task):
    plans = tiny_task.plans
    data, seg, props = preprocess_case([shared_data / "example_ct_sm.nii.gz"], plans, case_id="ct")
    img = sitk.ReadImage(str(shared_data / "example_ct_sm.nii.gz"))
    assert props["sitk_direction"] == pytest.approx(list(img.GetDirection()))
    assert props["sitk_origin"] == pytest.approx(list(img.GetOrigin()))
    assert props["shape_original"] == [30, 101, 122] and seg is None
    assert np.isfinite(data).all()
