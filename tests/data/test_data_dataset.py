import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from c2fnas_auto.data.dataset import cases_from_folder, load_dataset
from c2fnas_auto.data.image_io import read_image, read_segmentation, write_image
from c2fnas_auto.errors import InputError
from tests.data.helpers import tiny_task


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    root = tmp_path_factory.mktemp("dataset_tasks")
    return {"msd": tiny_task(root), "nnunet": tiny_task(root, layout="nnunet"),
            "msd_mm": tiny_task(root, channels=2, modality="MR", task_id=96),
            "nnunet_mm": tiny_task(root, layout="nnunet", channels=2, modality="MR", task_id=95)}


def test_msd_layout(tasks):
    ds = load_dataset(tasks["msd"])
    assert ds.layout == "msd" and ds.name == "Synthetic" and ds.file_ending == ".nii.gz"
    assert ds.channel_names == {0: "CT"} and ds.labels == {"background": 0, "organ": 1, "lesion": 2}
    assert [c.case_id for c in ds.training] == ["syn_000", "syn_001", "syn_002"]
    assert ds.training[0].image_files == [tasks["msd"] / "imagesTr" / "syn_000.nii.gz"]
    assert ds.training[0].label_file == tasks["msd"] / "labelsTr" / "syn_000.nii.gz"
    assert [c.case_id for c in ds.test] == ["syn_003"] and ds.test[0].label_file.is_file()
    assert ds.num_training_declared == 3 and ds.num_classes == 3


def test_nnunet_layout(tasks):
    ds = load_dataset(tasks["nnunet"])
    assert ds.layout == "nnunet" and ds.name == "Dataset097_Synthetic"
    assert ds.channel_names == {0: "CT"} and ds.labels == {"background": 0, "organ": 1, "lesion": 2}
    assert ds.training[1].image_files == [tasks["nnunet"] / "imagesTr" / "syn_001_0000.nii.gz"]
    assert ds.training[1].label_file == tasks["nnunet"] / "labelsTr" / "syn_001.nii.gz"
    assert len(ds.test) == 1 and ds.test[0].label_file is not None
    # Same seed, same voxels whatever the layout.
    msd = load_dataset(tasks["msd"])
    a, _ = read_image(ds.training[1].image_files)
    b, _ = read_image(msd.training[1].image_files)
    assert np.array_equal(a, b)


def test_msd_multimodal_4d_read_as_channels(tasks):
    ds = load_dataset(tasks["msd_mm"])
    assert ds.channel_names == {0: "T2", 1: "ADC"} and len(ds.training[0].image_files) == 1
    data, geo = read_image(ds.training[0].image_files)
    seg, seg_geo = read_segmentation(ds.training[0].label_file)
    assert data.shape == (2, 8, 16, 16) and seg.shape == data.shape[1:]
    assert geo.matches(seg_geo) is None and geo.spacing_zyx == (3.0, 1.0, 1.0)
    assert not np.array_equal(data[0], data[1])


def test_nnunet_multichannel(tasks):
    ds = load_dataset(tasks["nnunet_mm"])
    files = ds.training[0].image_files
    assert [f.name for f in files] == ["syn_000_0000.nii.gz", "syn_000_0001.nii.gz"]
    assert read_image(files)[0].shape == (2, 8, 16, 16)


def test_macos_junk_files_ignored(tasks, tmp_path):
    msd = shutil.copytree(tasks["msd"], tmp_path / "Task98_Synthetic")
    nn = shutil.copytree(tasks["nnunet"], tmp_path / "Dataset097_Synthetic")
    for folder in (msd / "imagesTr", msd / "imagesTs", nn / "imagesTr", nn / "labelsTr", nn / "imagesTs"):
        (folder / "._syn_000.nii.gz").write_bytes(b"\x00\x05\x16\x07 resource fork")
        (folder / "._syn_000_0000.nii.gz").write_bytes(b"\x00\x05\x16\x07 resource fork")
    meta = json.loads((msd / "dataset.json").read_text())
    meta["training"].append({"image": "./imagesTr/._syn_000.nii.gz", "label": "./labelsTr/._syn_000.nii.gz"})
    meta["test"].append("./imagesTs/._syn_000.nii.gz")
    (msd / "dataset.json").write_text(json.dumps(meta))
    assert len(load_dataset(msd).training) == 3 and len(load_dataset(msd).test) == 1
    assert len(load_dataset(nn).training) == 3 and len(load_dataset(nn).test) == 1
    assert len(cases_from_folder(msd / "imagesTs", 1)) == 1
    assert len(cases_from_folder(nn / "imagesTs", 1)) == 1


def _edit_json(folder: Path, **changes) -> None:
    meta = json.loads((folder / "dataset.json").read_text())
    meta.update(changes)
    for k, v in changes.items():
        if v is None:
            del meta[k]
    (folder / "dataset.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("layout,changes,message", [
    ("msd", {"labels": {"0": "background", "2": "lesion"}}, "consecutive integers"),
    ("msd", {"modality": {}}, "'modality' must be a non-empty object"),
    ("msd", {"modality": {"1": "CT"}}, "must number channels 0..0"),
    ("msd", {"training": {"a": 1}}, "'training' must be a list"),
    ("msd", {"training": [{"image": "./imagesTr/syn_000.nii.gz"}]}, "needs 'image' and 'label'"),
    ("nnunet", {"labels": {"background": 0, "organ": [1, 2]}}, "region-based label 'organ'"),
    ("nnunet", {"file_ending": None}, "'file_ending' must be a string"),
    ("nnunet", {"channel_names": None, "modality": None}, "neither MSD"),
])
def test_bad_dataset_json(tasks, tmp_path, layout, changes, message):
    folder = shutil.copytree(tasks[layout], tmp_path / "task")
    _edit_json(folder, **changes)
    with pytest.raises(InputError) as e:
        load_dataset(folder)
    assert str(folder / "dataset.json") in str(e.value) and message in str(e.value)


def test_missing_or_invalid_dataset_json(tmp_path):
    with pytest.raises(InputError, match=r"dataset\.json: dataset\.json not found"):
        load_dataset(tmp_path)
    (tmp_path / "dataset.json").write_text("{nope")
    with pytest.raises(InputError, match="not valid JSON"):
        load_dataset(tmp_path)


def test_nnunet_bad_file_names(tasks, tmp_path):
    folder = shutil.copytree(tasks["nnunet"], tmp_path / "task")
    (folder / "imagesTr" / "syn_000_0000.nii.gz").rename(folder / "imagesTr" / "syn_000.nii.gz")
    with pytest.raises(InputError, match=r"imagesTr/syn_000\.nii\.gz: file name does not follow CASE_XXXX"):
        load_dataset(folder)
    (folder / "imagesTr" / "syn_000.nii.gz").rename(folder / "imagesTr" / "syn_000_0003.nii.gz")
    with pytest.raises(InputError, match=r"syn_000_0003\.nii\.gz: channel 0003 is not declared"):
        load_dataset(folder)


def test_cases_from_folder_both_styles(tasks):
    nn = cases_from_folder(tasks["nnunet_mm"] / "imagesTs", 2)
    assert [c.case_id for c in nn] == ["syn_003"] and len(nn[0].image_files) == 2
    msd = cases_from_folder(tasks["msd_mm"] / "imagesTs", 2)
    assert [c.case_id for c in msd] == ["syn_003"] and len(msd[0].image_files) == 1
    assert [c.case_id for c in cases_from_folder(tasks["msd"] / "imagesTr", 1)] == ["syn_000", "syn_001", "syn_002"]


def test_cases_from_folder_wrong_channel_count(tasks, tmp_path):
    with pytest.raises(InputError,
                       match=r"imagesTs/syn_003: case has channel files 0000, 0001, the plans expect 0000$"):
        cases_from_folder(tasks["nnunet_mm"] / "imagesTs", 1)
    with pytest.raises(InputError, match=r"syn_003\.nii\.gz: case has 2 channel\(s\), the plans expect 3"):
        cases_from_folder(tasks["msd_mm"] / "imagesTs", 3)
    with pytest.raises(InputError, match=r"syn_003\.nii\.gz: case has 1 channel\(s\), the plans expect 2"):
        cases_from_folder(tasks["msd"] / "imagesTs", 2)
    with pytest.raises(InputError, match="no .nii.gz images found"):
        cases_from_folder(tmp_path, 1)
    with pytest.raises(InputError, match="input folder not found"):
        cases_from_folder(tmp_path / "nope", 1)


def test_cases_from_folder_other_endings(tmp_path, tasks):
    data, geo = read_image(load_dataset(tasks["msd"]).test[0].image_files)
    write_image(data[0], geo, tmp_path / "a.nrrd")
    cases = cases_from_folder(tmp_path, 1, file_ending=".nrrd")
    assert [c.case_id for c in cases] == ["a"]
