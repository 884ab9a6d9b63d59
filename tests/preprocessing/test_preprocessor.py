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
from c2fnas_auto.preprocessing.resampling import case_low_res_axis, resample_to_shape
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
    for xs in [4.0, 4.0, 3.0]:
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
    for case_id, (_img, seg, _) in zip(list_cases(pre), cases):
        data, pseg, props = load_case(pre, case_id, mmap=False)
        assert props["shape_original"] == [40, 30, 8] and props["spacing_original"][2] in (4.0, 3.0)
        assert pseg.shape[1] < pseg.shape[2]  # coarse axis first
        assert set(np.unique(pseg)) == {0, 1, 2}
        # back to the cropped original grid, as export does
        back = resample_to_shape(pseg, [props["shape_after_crop"][a] for a in plans.transpose_forward], True,
                                 plans.resampling, case_low_res_axis(props, plans.resampling)
                                 )[0].transpose(plans.transpose_backward)
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


def _slice_ramp(shape):
    """An image whose value is constant in each z slice: 100, 110, 120, ..."""
    return (np.arange(shape[0], dtype=np.int16)[:, None, None] * 10 + 100 + np.zeros(shape, np.int16))


def test_thick_slice_case_resampled_separately_in_a_thin_slice_dataset(roots):
    """B5: mixed slice thickness (as MSD Liver). The dataset's median is isotropic, yet the
    one 5 mm case goes across its slices with nearest neighbour, in-plane with a spline."""
    seg = np.zeros((6, 24, 24), np.uint8)
    seg[2:4, 6:18, 6:18] = 1
    thin = (_slice_ramp((24, 24, 24)), np.repeat(seg, 4, axis=0), (1.0, 1.0, 1.0))
    thick = (_slice_ramp((6, 24, 24)), seg, (1.0, 1.0, 5.0))
    _write_msd_task(roots / "raw", "Task92_Mixed", [thin, thin, thick])
    plans = plan_and_preprocess(92, gpu_memory_gb=0.25, base_channels=4)
    assert plans.target_spacing == pytest.approx([1.0, 1.0, 1.0]) and not plans.resampling["anisotropic"]
    pre = roots / "preprocessed" / "Task92_Mixed"
    data, _, props = load_case(pre, "case_2", mmap=False)
    assert props["resampling_low_res_axis"] == 0 and data.shape[1] == 30
    # nearest across slices: every output slice is a copy of one of the 6 input slices (the CT clip
    # may merge some); a 3D cubic would blend neighbours into ~30 different values
    profile = np.round(data[0, :, 12, 12], 4)
    assert 1 < len(np.unique(profile)) <= 6 and np.all(np.diff(profile) >= 0)
    assert load_case(pre, "case_0")[2]["resampling_low_res_axis"] is None


def test_export_goes_back_with_the_case_own_decision(tiny_task):
    """B5, export side: the per-case record, not the plans-wide flag, picks the separate axis."""
    from c2fnas_auto.inference.export import probabilities_to_original

    plans = tiny_task.plans.copy()
    plans.transpose_forward, plans.transpose_backward = [0, 1, 2], [0, 1, 2]
    plans.resampling["anisotropic"] = False
    probs = np.stack([1.0 - _slice_ramp((8, 6, 6)) / 200.0, _slice_ramp((8, 6, 6)) / 200.0]).astype(np.float32)
    props = {"shape_after_crop": [4, 12, 12], "shape_original": [4, 12, 12],
             "crop_bbox": [[0, 4], [0, 12], [0, 12]], "resampling_low_res_axis": 0}
    back = probabilities_to_original(probs, props, plans)
    assert back.shape == (2, 4, 12, 12)
    assert set(np.round(np.unique(back[1]), 4)) <= set(np.round(np.unique(probs[1]), 4))
    props["resampling_low_res_axis"] = None  # resampled in 3D: linear blends between slices
    assert not set(np.round(np.unique(probabilities_to_original(probs, props, plans)[1]), 4)) <= \
        set(np.round(np.unique(probs[1]), 4))


def test_case_removed_from_dataset_json_is_not_listed_split_or_kept(copy_task):
    """B6: a case dropped from dataset.json leaves the preprocessed folder on the next run, and
    splits / training only ever see the dataset's own cases."""
    from c2fnas_auto.preprocessing.storage import dataset_case_ids, list_dataset_cases
    from c2fnas_auto.training.splits import SPLITS_FILE, get_splits

    pre = copy_task.preprocessed_dir
    meta_path = copy_task.raw_dir / "dataset.json"
    meta = json.loads(meta_path.read_text())
    removed = meta["training"].pop(0)
    meta["numTraining"] -= 1
    meta_path.write_text(json.dumps(meta))
    gone = removed["image"].split("/")[-1].replace(".nii.gz", "")
    assert gone in list_cases(pre)
    plan_and_preprocess(98, gpu_memory_gb=0.25, base_channels=4, num_workers=1)
    assert gone not in list_cases(pre) and not (pre / "data" / f"{gone}.npy").exists()
    assert gone not in dataset_case_ids(pre) and len(list_dataset_cases(pre)) == 7
    splits = get_splits(pre)
    assert gone not in {c for s in splits for c in s["train"] + s["val"]}
    # an older split that still names the removed case is refused, not trained on
    (pre / SPLITS_FILE).write_text(json.dumps([{"train": [gone], "val": splits[0]["val"]}]))
    with pytest.raises(C2FNASError, match=f"not in the dataset .*{gone}"):
        get_splits(pre)


def test_leftover_arrays_are_never_listed_as_dataset_cases(copy_task):
    """B6: finished-looking files the dataset does not name (copied in, or older runs) stay out."""
    import shutil

    from c2fnas_auto.preprocessing.storage import case_paths, list_dataset_cases

    data = copy_task.preprocessed_dir / "data"
    own = list_cases(data)
    for src, dst in zip(case_paths(data, own[0]), case_paths(data, "stranger")):
        shutil.copyfile(src, dst)
    props = json.loads(case_paths(data, "stranger")[2].read_text())
    case_paths(data, "stranger")[2].write_text(json.dumps({**props, "case_id": "stranger"}))
    assert "stranger" in list_cases(data)  # the plain folder listing sees it ...
    assert list_dataset_cases(data) == own  # ... the dataset's listing does not
    assert list_cases(data, ["stranger", "nobody"]) == ["stranger"]


def test_case_list_missing_or_broken_names_the_file(copy_task):
    from c2fnas_auto.preprocessing.storage import CASES_FILE, dataset_case_ids

    path = copy_task.preprocessed_dir / "data" / CASES_FILE
    for content, words in (('{"training": [1, 2]}', "list of case ids"), ("{ nope", "unreadable")):
        path.write_text(content)
        with pytest.raises(C2FNASError, match=words) as info:
            dataset_case_ids(copy_task.preprocessed_dir)
        assert CASES_FILE in str(info.value)
    path.unlink()
    with pytest.raises(C2FNASError, match="older version"):
        dataset_case_ids(copy_task.preprocessed_dir)


def test_arrays_from_older_code_are_redone(copy_task):
    """Per-case resampling changed the arrays: a folder made before it is redone, not reused."""
    from c2fnas_auto.preprocessing.preprocessor import SETTINGS_FILE, preprocess_dataset

    settings_path = copy_task.preprocessed_dir / "data" / SETTINGS_FILE
    old = json.loads(settings_path.read_text())
    del old["preprocessing_version"]
    settings_path.write_text(json.dumps(old))
    counts = preprocess_dataset(copy_task.task_name, copy_task.plans, num_workers=1)
    assert counts == {"processed": 8, "skipped": 0}


def test_skewed_input_exported_with_its_own_affine(tiny_task, tmp_path):
    """B7 end to end: preprocess_case keeps the input's affine in the properties and the
    exported prediction is written with it (not with the orthonormalised header)."""
    import nibabel as nib

    from c2fnas_auto.inference.export import export_prediction

    affine = np.diag([-1.0, -1.0, 3.0, 1.0])
    affine[0, 1] = 0.04
    affine[:3, 3] = [20.0, 10.0, -5.0]
    img = nib.Nifti1Image(np.random.default_rng(0).normal(100, 20, (40, 40, 24)).astype(np.float32), affine)
    img.set_qform(None, code=0)
    img.set_sform(affine, code=1)
    nib.save(img, str(tmp_path / "skewed.nii.gz"))
    data, _, props = preprocess_case([tmp_path / "skewed.nii.gz"], tiny_task.plans)
    assert props["nifti_affine"] == pytest.approx(list(affine.ravel()))
    probs = np.zeros((tiny_task.plans.num_classes, *data.shape[1:]), np.float32)
    probs[0] = 1.0
    export_prediction(probs, props, tiny_task.plans, tmp_path / "out" / "skewed.nii.gz")
    written = nib.load(str(tmp_path / "out" / "skewed.nii.gz"))
    assert written.shape == img.shape and np.allclose(written.affine, affine, atol=1e-5)


def test_unreadable_settings_and_case_list_are_rewritten(copy_task):
    """A half-written settings file means unknown settings: redo everything; a broken case
    list is simply written again from dataset.json."""
    from c2fnas_auto.preprocessing.preprocessor import SETTINGS_FILE, preprocess_dataset
    from c2fnas_auto.preprocessing.storage import CASES_FILE, dataset_case_ids

    data = copy_task.preprocessed_dir / "data"
    (data / SETTINGS_FILE).write_text('{"target_spac')
    (data / CASES_FILE).write_text("[")
    counts = preprocess_dataset(copy_task.task_name, copy_task.plans, num_workers=1)
    assert counts == {"processed": 8, "skipped": 0}
    assert json.loads((data / SETTINGS_FILE).read_text())["preprocessing_version"] >= 2
    assert len(dataset_case_ids(copy_task.preprocessed_dir)) == 8
