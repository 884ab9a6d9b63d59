import json

import numpy as np
import pytest

from c2fnas_auto.cli.make_synthetic_task import main as cli_main
from c2fnas_auto.data.dataset import load_dataset
from c2fnas_auto.data.image_io import read_image, read_segmentation
from c2fnas_auto.data.integrity import verify_dataset
from c2fnas_auto.data.synthetic import make_synthetic_task
from c2fnas_auto.errors import InputError

SMALL = dict(num_train=6, num_test=2, shape=(10, 20, 20), progress=False)


def _all_voxels(folder):
    ds = load_dataset(folder)
    out = []
    for case in [*ds.training, *ds.test]:
        img, geo = read_image(case.image_files)
        seg, _ = read_segmentation(case.label_file)
        out.append((img, seg, geo))
    return out


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return make_synthetic_task(tmp_path_factory.mktemp("syn"), seed=3, **SMALL)


def test_deterministic_for_seed(small, tmp_path):
    again = make_synthetic_task(tmp_path / "a", seed=3, **SMALL)
    other = make_synthetic_task(tmp_path / "b", seed=4, **SMALL)
    for (i1, s1, g1), (i2, s2, g2) in zip(_all_voxels(small), _all_voxels(again)):
        assert np.array_equal(i1, i2) and np.array_equal(s1, s2) and g1 == g2
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(_all_voxels(small), _all_voxels(other)))


def test_declared_labels_only_and_properties(small):
    ds = load_dataset(small)
    verify_dataset(ds, progress=False)  # declared labels, matching grids, finite voxels
    cases = _all_voxels(small)
    label_sets = [set(np.unique(s).tolist()) for _, s, _ in cases]
    assert all(ls <= {0, 1, 2} and 1 in ls for ls in label_sets)
    assert any(2 in ls for ls in label_sets) and any(2 not in ls for ls in label_sets)  # some without lesion
    geos = [g for _, _, g in cases]
    assert all(g.spacing_zyx == (3.0, 1.0, 1.0) for g in geos)  # anisotropic, z coarse
    assert any(g.direction != (1, 0, 0, 0, 1, 0, 0, 0, 1) for g in geos)
    assert any(abs(g.direction[1]) > 0.05 for g in geos)  # an oblique case
    assert all(any(abs(o) > 1 for o in g.origin) for g in geos)
    # The organ is visibly brighter than its surroundings (learnable) and the lesion darker.
    img, seg, _ = cases[0]
    body = (img[0] > -500) & (seg == 0)
    assert img[0][seg == 1].mean() - img[0][body].mean() > 40
    lesion_case = next((i, s) for i, s, _ in cases if (s == 2).any())
    assert lesion_case[0][0][lesion_case[1] == 2].mean() < lesion_case[0][0][lesion_case[1] == 1].mean() - 20
    meta = json.loads((small / "dataset.json").read_text())
    assert meta["labels"] == {"0": "background", "1": "organ", "2": "lesion"} and meta["numTraining"] == 6


def test_mr_multichannel_nnunet(tmp_path):
    folder = make_synthetic_task(tmp_path, task_id=5, name="Prost", layout="nnunet", modality="MR", channels=2,
                                 seed=1, **SMALL)
    assert folder.name == "Dataset005_Prost"
    ds = load_dataset(folder)
    verify_dataset(ds, progress=False)
    img, _ = read_image(ds.training[0].image_files)
    assert ds.channel_names == {0: "T2", 1: "ADC"} and img.shape == (2, 10, 20, 20) and img.min() >= 0


def test_rerun_and_overwrite(small, tmp_path):
    root = small.parent
    assert make_synthetic_task(root, seed=3, **SMALL) == small  # same arguments: kept
    with pytest.raises(InputError, match="Task98_Synthetic: folder exists"):
        make_synthetic_task(root, seed=5, **SMALL)
    folder = make_synthetic_task(tmp_path, seed=5, **SMALL)
    make_synthetic_task(tmp_path, seed=6, overwrite=True, **SMALL)
    assert json.loads((folder / "dataset.json").read_text())["synthetic"]["seed"] == 6
    assert [p.name for p in tmp_path.iterdir()] == ["Task98_Synthetic"]  # no build folders left


@pytest.mark.parametrize("kwargs,message", [
    (dict(layout="bids"), "layout 'bids'"), (dict(modality="PET"), "modality 'PET'"),
    (dict(num_train=0), "need >= 1 training case"), (dict(shape=(4, 20, 20)), "shape"),
    (dict(spacing=(0.0, 1.0, 1.0)), "spacing"), (dict(name="a b"), "name 'a b'"),
    (dict(spacing_jitter=1.0), "spacing jitter"),
])
def test_bad_arguments(tmp_path, kwargs, message):
    args = {**SMALL, **kwargs}
    with pytest.raises(InputError, match=message):
        make_synthetic_task(tmp_path, **args)


def test_cli(tmp_path, capsys):
    rc = cli_main(["--raw", str(tmp_path / "ü raw"), "--task-id", "12", "--num-train", "2", "--num-test", "1",
                   "--shape", "8", "12", "12", "--spacing", "2.5", "0.8", "0.8", "--layout", "nnunet",
                   "--seed", "7", "--no-progress"])
    assert rc == 0
    folder = tmp_path / "ü raw" / "Dataset012_Synthetic"
    assert capsys.readouterr().out.strip() == str(folder)
    ds = load_dataset(folder)
    assert len(ds.training) == 2 and len(ds.test) == 1
    assert np.allclose(read_image(ds.training[0].image_files)[1].spacing_zyx, (2.5, 0.8, 0.8))  # float32 in NIfTI
    rc = cli_main(["--raw", str(tmp_path / "ü raw"), "--task-id", "12", "--layout", "nnunet", "--no-progress"])
    assert rc == 2 and "folder exists" in capsys.readouterr().err


def test_spacing_jitter_gives_each_case_its_own_spacing(small, tmp_path):
    """Real datasets mix slice thicknesses: with a jitter the cases must be resampled."""
    folder = make_synthetic_task(tmp_path, seed=3, spacing=(3.0, 0.8, 0.8), spacing_jitter=0.25, **SMALL)
    spacings = np.array([g.spacing_zyx for _, _, g in _all_voxels(folder)])
    assert len({tuple(s) for s in spacings}) == len(spacings)
    assert np.all(spacings >= np.array([3.0, 0.8, 0.8]) * 0.75) and np.all(spacings <= np.array([3.0, 0.8, 0.8]) * 1.25)
    assert json.loads((folder / "dataset.json").read_text())["synthetic"]["spacing_jitter"] == 0.25
    # without a jitter nothing changes: no key in dataset.json, one spacing for all
    assert "spacing_jitter" not in json.loads((small / "dataset.json").read_text())["synthetic"]
    assert len({g.spacing for _, _, g in _all_voxels(small)}) == 1
