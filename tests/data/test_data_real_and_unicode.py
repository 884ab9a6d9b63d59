"""Real CT/MR volumes (TotalSegmentator examples) and awkward paths."""

import json
import shutil

import numpy as np

from c2fnas_auto import paths
from c2fnas_auto.data.dataset import load_dataset
from c2fnas_auto.data.image_io import read_image, read_image_info, read_segmentation, write_segmentation
from c2fnas_auto.data.integrity import verify_dataset
from tests.data.helpers import tiny_task


def test_real_ct_geometry(shared_data):
    img, geo = read_image([shared_data / "example_ct_sm.nii.gz"])
    seg, seg_geo = read_segmentation(shared_data / "example_seg.nii.gz")
    assert img.shape == (1, 30, 101, 122) and img.dtype == np.float32
    assert np.array(geo.direction).reshape(3, 3).tolist() == np.diag([-1.0, -1.0, 1.0]).tolist()
    assert geo.spacing == (3.0, 3.0, 3.0) and any(abs(o) > 1 for o in geo.origin)
    assert img.min() == -1100 and img.max() == 1207
    assert seg.shape == img.shape[1:] and geo.matches(seg_geo) is None
    assert read_image_info(shared_data / "example_ct_sm.nii.gz").shape_zyx == (30, 101, 122)


def test_real_mr_geometry(shared_data):
    img, geo = read_image([shared_data / "example_mr_sm.nii.gz"])
    seg, seg_geo = read_segmentation(shared_data / "example_seg_mr.nii.gz")
    assert img.shape == (1, 20, 91, 117)
    assert geo.direction == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    assert seg.shape == img.shape[1:] and geo.matches(seg_geo) is None


def test_real_ct_as_msd_task_verifies(shared_data, tmp_path):
    """A one-case MSD task built from the real CT (pancreas = TotalSegmentator label 7)."""
    task = tmp_path / "Task07_Pancreas"
    (task / "imagesTr").mkdir(parents=True)
    shutil.copy(shared_data / "example_ct_sm.nii.gz", task / "imagesTr" / "ct_001.nii.gz")
    seg, geo = read_segmentation(shared_data / "example_seg.nii.gz")
    write_segmentation((seg == 7).astype(np.uint8), geo, task / "labelsTr" / "ct_001.nii.gz")
    (task / "dataset.json").write_text(json.dumps({
        "name": "Pancreas", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "pancreas"},
        "numTraining": 1, "training": [{"image": "./imagesTr/ct_001.nii.gz", "label": "./labelsTr/ct_001.nii.gz"}],
        "test": []}))
    verify_dataset(load_dataset(paths.resolve_task(7, tmp_path)), progress=False)
    # The full 41-class map is not declared by this dataset.json: the check says so.
    shutil.copy(shared_data / "example_seg.nii.gz", task / "labelsTr" / "ct_001.nii.gz")
    try:
        verify_dataset(load_dataset(task), progress=False)
    except Exception as exc:
        assert str(exc).startswith(str(task / "labelsTr" / "ct_001.nii.gz")) and "not declared" in str(exc)
    else:
        raise AssertionError("undeclared TotalSegmentator labels were accepted")


def test_spaces_and_non_ascii_paths(tmp_path, monkeypatch):
    root = tmp_path / "dätä mit Leerzeichen" / "räw 原始"
    for layout in ("msd", "nnunet"):
        folder = tiny_task(root, layout=layout)
        monkeypatch.setenv("C2FNAS_raw", str(root))
        resolved = paths.resolve_task(98 if layout == "msd" else 97)
        assert resolved == folder
        ds = load_dataset(resolved)
        verify_dataset(ds, progress=False)
        img, geo = read_image(ds.training[0].image_files)
        out = tmp_path / "prédictions ü" / "syn 000.nii.gz"
        write_segmentation(np.zeros(img.shape[1:], np.uint8), geo, out)
        assert read_segmentation(out)[1] == geo
