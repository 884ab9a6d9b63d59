"""Every integrity error: one line that names the offending file and the problem."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from c2fnas_auto.data.dataset import load_dataset
from c2fnas_auto.data.integrity import verify_dataset
from c2fnas_auto.errors import InputError
from tests.data.helpers import rewrite, tiny_task


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    root = tmp_path_factory.mktemp("integrity_tasks")
    return {"msd": tiny_task(root), "nnunet": tiny_task(root, layout="nnunet"),
            "msd_mm": tiny_task(root, channels=2, modality="MR", task_id=96),
            "nnunet_mm": tiny_task(root, layout="nnunet", channels=2, modality="MR", task_id=95)}


@pytest.fixture
def task(tasks, tmp_path):
    """Return a function giving a private copy of one of the tiny tasks."""
    return lambda kind="msd": shutil.copytree(tasks[kind], tmp_path / tasks[kind].name)


def _fails(folder: Path, file: Path | None, *fragments: str, num_workers: int = 1) -> str:
    with pytest.raises(InputError) as e:
        verify_dataset(load_dataset(folder), num_workers=num_workers, progress=False)
    msg = str(e.value)
    assert "\n" not in msg
    if file is not None:
        assert msg.startswith(f"{file}:"), msg
    for frag in fragments:
        assert frag in msg, msg
    return msg


@pytest.mark.parametrize("kind", ["msd", "nnunet", "msd_mm", "nnunet_mm"])
def test_clean_tasks_pass(tasks, kind):
    verify_dataset(load_dataset(tasks[kind]), progress=False)


def test_clean_task_passes_with_workers(tasks):
    verify_dataset(load_dataset(tasks["msd"]), num_workers=2, progress=False)


def test_missing_image(task):
    t = task()
    (t / "imagesTr" / "syn_001.nii.gz").unlink()
    _fails(t, t / "imagesTr" / "syn_001.nii.gz", "image file not found")


def test_missing_label(task):
    t = task()
    (t / "labelsTr" / "syn_002.nii.gz").unlink()
    _fails(t, t / "labelsTr" / "syn_002.nii.gz", "label file not found")


def test_truncated_image(task):
    t = task()
    f = t / "imagesTr" / "syn_001.nii.gz"
    f.write_bytes(f.read_bytes()[:-200])
    _fails(t, f, "truncated")


def test_truncated_label_found_with_workers(task):
    t = task()
    f = t / "labelsTr" / "syn_002.nii.gz"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    _fails(t, f, "truncated", num_workers=2)


def test_corrupt_gzip_stream(task):
    """A flipped byte inside the compressed data: ITK would read garbage without a word."""
    t = task()
    f = t / "imagesTr" / "syn_002.nii.gz"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    _fails(t, f, "truncated or corrupt file")


def test_unreadable_image(task):
    t = task()
    f = t / "imagesTr" / "syn_000.nii.gz"
    f.write_bytes(b"this is not a NIfTI file")
    _fails(t, f, "unreadable")


@pytest.mark.parametrize("change,fragment", [
    (dict(spacing=(1.0, 1.0, 2.5)), "spacing"),
    (dict(origin=(10.0, 20.0, 30.0)), "origin"),
    (dict(direction=(0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0)), "direction"),
])
def test_label_grid_differs(task, change, fragment):
    t = task()
    label = t / "labelsTr" / "syn_001.nii.gz"
    rewrite(label, **change)
    _fails(t, label, "label grid differs from image syn_001.nii.gz", fragment)


def test_label_grid_tiny_difference_tolerated(task):
    t = task()
    label = t / "labelsTr" / "syn_001.nii.gz"
    sp = sitk.ReadImage(str(label)).GetSpacing()
    rewrite(label, spacing=tuple(s * (1 + 1e-5) for s in sp))
    verify_dataset(load_dataset(t), progress=False)


def test_label_shape_differs(task):
    t = task()
    label = t / "labelsTr" / "syn_000.nii.gz"
    rewrite(label, array_fn=lambda a: a[:, :, :-1])
    _fails(t, label, "label shape (8, 16, 15) differs from image syn_000.nii.gz shape (8, 16, 16)")


def test_undeclared_label_values(task):
    t = task()
    label = t / "labelsTr" / "syn_002.nii.gz"
    rewrite(label, array_fn=lambda a: np.where(a == 1, 7, a).astype(np.uint8))
    _fails(t, label, "label values [7] are not declared in dataset.json labels [0, 1, 2]")


def test_non_integer_label(task):
    t = task()
    label = t / "labelsTr" / "syn_000.nii.gz"
    rewrite(label, array_fn=lambda a: a.astype(np.float32) * 0.5)
    _fails(t, label, "non-integer")


@pytest.mark.parametrize("bad,name", [(np.nan, "NaN"), (np.inf, "inf")])
def test_nan_inf_voxels(task, bad, name):
    t = task()
    f = t / "imagesTr" / "syn_001.nii.gz"

    def poison(a):
        a = a.astype(np.float32)
        a[2, 3, 4] = bad
        return a

    rewrite(f, array_fn=poison)
    _fails(t, f, "image contains 1 NaN/inf voxel")


def test_nan_in_label(task):
    t = task()
    label = t / "labelsTr" / "syn_000.nii.gz"

    def poison(a):
        a = a.astype(np.float32)
        a[0, 0, 0] = np.nan
        return a

    rewrite(label, array_fn=poison)
    _fails(t, label, "segmentation contains NaN or inf")


def test_nan_in_mha_image(tmp_path):
    """Non-NIfTI formats keep NaN in the array SimpleITK returns."""
    from c2fnas_auto.data.image_io import count_nonfinite

    a = np.zeros((4, 5, 6), np.float32)
    a[1, 2, 3] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(a), str(tmp_path / "x.mha"))
    assert count_nonfinite(tmp_path / "x.mha", sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "x.mha")))) == 1


def test_nan_in_test_image(task):
    t = task()
    f = t / "imagesTs" / "syn_003.nii.gz"
    rewrite(f, array_fn=lambda a: np.full(a.shape, np.nan, np.float32))
    _fails(t, f, "NaN/inf")


def test_2d_image(task):
    t = task()
    f = t / "imagesTr" / "syn_000.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((16, 16), np.int16)), str(f))
    _fails(t, f, "image is 2D")


def test_4d_image_in_nnunet_layout(task):
    t = task("nnunet")
    f = t / "imagesTr" / "syn_000_0000.nii.gz"
    rewrite(f, array_fn=lambda a: np.stack([a, a]))
    _fails(t, f, "image is 4D", "one 3D file per channel")


def test_missing_channel_nnunet(task):
    t = task("nnunet_mm")
    f = t / "imagesTr" / "syn_002_0001.nii.gz"
    f.unlink()
    _fails(t, f, "missing channel 0001 (ADC) of case syn_002")


def test_channel_grid_differs_nnunet(task):
    t = task("nnunet_mm")
    f = t / "imagesTr" / "syn_001_0001.nii.gz"
    rewrite(f, origin=(1.0, 2.0, 3.0))
    _fails(t, f, "channel grid differs from syn_001_0000.nii.gz", "origin")


def test_missing_modality_msd(task):
    t = task("msd_mm")
    f = t / "imagesTr" / "syn_000.nii.gz"
    rewrite(f, array_fn=lambda a: a[0])
    _fails(t, f, "image is 3D (1 channel)", "declares 2 (0: T2, 1: ADC)", "missing modality")


def test_wrong_channel_count_4d_msd(task):
    t = task("msd_mm")
    f = t / "imagesTr" / "syn_001.nii.gz"
    rewrite(f, array_fn=lambda a: np.concatenate([a, a[:1]]))
    _fails(t, f, "4D image has 3 channels", "declares 2")


def _edit(folder: Path, fn) -> None:
    meta = json.loads((folder / "dataset.json").read_text())
    fn(meta)
    (folder / "dataset.json").write_text(json.dumps(meta))


def test_no_training_cases(task):
    t = task()
    _edit(t, lambda m: (m.__setitem__("training", []), m.pop("numTraining")))
    _fails(t, t / "dataset.json", "no training cases")
    t2 = task("nnunet")
    shutil.rmtree(t2 / "imagesTr")
    _fails(t2, t2 / "dataset.json", "no training cases")


def test_num_training_mismatch(task):
    t = task("nnunet")
    _edit(t, lambda m: m.__setitem__("numTraining", 5))
    _fails(t, t / "dataset.json", "numTraining is 5 but 3 training cases were found")


def test_duplicate_case_ids(task):
    t = task()
    _edit(t, lambda m: (m["training"].append(dict(m["training"][0])), m.__setitem__("numTraining", 4)))
    _fails(t, t / "dataset.json", "duplicate case id 'syn_000'", str(t / "imagesTr" / "syn_000.nii.gz"))


def test_problem_order_is_case_order_with_workers(task):
    t = task()
    (t / "labelsTr" / "syn_001.nii.gz").unlink()
    (t / "imagesTr" / "syn_002.nii.gz").unlink()
    _fails(t, t / "labelsTr" / "syn_001.nii.gz", "label file not found", num_workers=2)


def test_inputs_not_modified(task):
    t = task()
    before = {p: p.read_bytes() for p in t.rglob("*") if p.is_file()}
    verify_dataset(load_dataset(t), progress=False)
    assert {p: p.read_bytes() for p in t.rglob("*") if p.is_file()} == before


def test_structural_problem_reported_before_voxel_problem(task):
    """The header pass covers all cases before any voxels are read."""
    t = task()
    rewrite(t / "imagesTr" / "syn_000.nii.gz", array_fn=lambda a: np.full(a.shape, np.inf, np.float32))
    rewrite(t / "labelsTs" / "syn_003.nii.gz", origin=(5.0, 5.0, 5.0))
    _fails(t, t / "labelsTs" / "syn_003.nii.gz", "label grid differs", "origin")


def test_4d_label(task):
    t = task()
    label = t / "labelsTr" / "syn_001.nii.gz"
    rewrite(label, array_fn=lambda a: np.stack([a, a]))
    _fails(t, label, "segmentation is 4D")
