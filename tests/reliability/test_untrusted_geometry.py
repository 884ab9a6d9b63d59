"""Image headers crafted as an attacker would: sizes after resampling that no machine holds,
spacings no scanner makes, a sform that disagrees with the qform. Built here with nibabel
or by patching header bytes; each fails alone with one line, within seconds, before any
voxel is resampled."""

from __future__ import annotations

import logging
import gzip
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from c2fnas_auto.errors import InputError
from c2fnas_auto.nas.checkpoint import save_checkpoint
from c2fnas_auto.nas.network import build_network
from c2fnas_auto.paths import experiment_name, results_dir
from c2fnas_auto.preprocessing import resample_bound
from c2fnas_auto.utils.testing import call_cli, cli_env

GIB = 2 ** 30


def _write_fold(task) -> None:
    torch.manual_seed(0)
    net = build_network(task.plans.genotype, task.plans.network_config())
    folder = results_dir(task.task_name, experiment_name(task.plans.plans_name, task.plans.genotype.short_id()))
    save_checkpoint(folder / "fold_0" / "checkpoint_final.pth", network_state=net.state_dict(), optimizer_state={},
                    scaler_state={}, epoch=1, log_state={}, plans=task.plans.to_dict(),
                    genotype=task.plans.genotype.to_dict(), network_config=task.plans.network_config().to_dict())


def _nifti(path: Path, shape=(8, 8, 8), zooms=(1.0, 1.0, 1.0), affine=None) -> Path:
    """A small float32 NIfTI (x, y, z) = `shape` with voxel size `zooms`."""
    if affine is None:
        affine = np.diag([*zooms, 1.0])
    img = nib.Nifti1Image(np.random.default_rng(0).random(shape).astype(np.float32), affine)
    img.header.set_zooms(zooms)
    img.to_filename(str(path))
    return path


def _gzip_bomb(path: Path, shape: tuple[int, int, int]) -> Path:
    """A valid .nii.gz of uint8 zeros of `shape` (x, y, z): the header, then one compressed
    64 MiB block of zeros repeated as gzip members (readers inflate them as one stream), so
    2 GiB of voxels take a few MB on disk and a moment to write."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.uint8)
    header.set_zooms((1.0, 1.0, 1.0))
    header.set_qform(np.eye(4), code=1)
    header["vox_offset"] = 352
    block = 64 << 20
    total = int(np.prod(shape))
    assert total % block == 0
    zeros = gzip.compress(bytes(block), compresslevel=1)
    with open(path, "wb") as fh:
        fh.write(gzip.compress(header.binaryblock + b"\0" * 4))
        for _ in range(total // block):
            fh.write(zeros)
    return path


def _predict(task, folder: Path, out: Path, *extra, ending: str = ".nii"):
    return call_cli("predict", ["-i", folder, "-o", out, "-t", 98, "-f", 0, "--device", "cpu", "--disable-tta",
                                "--file-ending", ending, *extra], cli_env(task.root))


def _failed_alone(res, name: str, problem: str) -> str:
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.describe()
    hits = [line for line in res.message_lines() if line.startswith(f"case {name}: failed: ")]
    assert len(hits) == 1 and problem in hits[0], res.describe()
    return hits[0]


def test_header_declaring_a_huge_resampled_volume_fails_in_seconds(copy_task, tmp_path):
    torch.set_num_threads(1)
    _write_fold(copy_task)
    inputs = tmp_path / "in"
    inputs.mkdir()
    _nifti(inputs / "coarse_0000.nii", shape=(16, 16, 16), zooms=(100.0, 100.0, 100.0))  # 19 KB, ~1e11 voxels
    bombs = tmp_path / "bombs"
    bombs.mkdir()
    bomb = _gzip_bomb(bombs / "bomb_0000.nii.gz", (1024, 1024, 2048))  # 2 GiB of voxels
    assert bomb.stat().st_size < 20 << 20
    for folder, name, ending in ((inputs, "coarse", ".nii"), (bombs, "bomb", ".nii.gz")):
        out = tmp_path / f"out-{name}"
        t0 = time.monotonic()
        res = _predict(copy_task, folder, out, ending=ending)
        assert time.monotonic() - t0 < 60
        _failed_alone(res, name, "over the limit")
        assert not list(out.glob("*.nii*")), sorted(out.iterdir())  # no prediction written


def test_two_gib_resampled_volume_is_refused_under_the_flag_and_the_flag_raises_the_bound(copy_task, tmp_path):
    torch.set_num_threads(1)
    _write_fold(copy_task)
    target = [float(s) for s in copy_task.plans.target_spacing]  # (z, y, x), preprocessed order
    inputs = tmp_path / "in"
    inputs.mkdir()
    # (x, y, z) = 64^3 voxels whose spacing makes 2 GiB of float32 (2^29 voxels) at the target spacing
    factor = (2 ** 29) ** (1 / 3) / 64
    zooms = tuple(t * factor for t in reversed(target))
    _nifti(inputs / "big_0000.nii", shape=(64, 64, 64), zooms=zooms)
    res = _predict(copy_task, inputs, tmp_path / "out", "--max-resampled-gb", 4)
    line = _failed_alone(res, "big", "over the limit of 4.0 GiB")
    assert "--max-resampled-gb" in line
    res = call_cli("predict", ["-i", inputs, "-o", tmp_path / "o2", "-t", 98, "--max-resampled-gb", -1],
                   cli_env(copy_task.root))
    assert res.returncode == 2 and "must be a positive number" in res.stderr, res.describe()


@pytest.mark.parametrize("spacing", [1e-6, 1e4])
def test_implausible_spacing_is_refused(copy_task, tmp_path, spacing):
    torch.set_num_threads(1)
    _write_fold(copy_task)
    inputs = tmp_path / "in"
    inputs.mkdir()
    _nifti(inputs / "odd_0000.nii", zooms=(spacing, 1.0, 1.0))
    res = _predict(copy_task, inputs, tmp_path / "out")
    _failed_alone(res, "odd", "outside [0.01, 100] mm")


def test_training_case_with_implausible_spacing_stops_preprocessing(raw_root):
    from .helpers import task_folder

    folder = task_folder(raw_root)
    image = sorted((folder / "imagesTr").glob("*.nii.gz"))[0]
    label = folder / "labelsTr" / image.name
    for f in (image, label):
        nii = nib.load(str(f))
        data = np.asanyarray(nii.dataobj)
        new = nib.Nifti1Image(data, np.diag([1e-6, 1e-6, 1e-6, 1.0]))
        new.header.set_zooms((1e-6, 1e-6, 1e-6))
        new.to_filename(str(f))
    res = call_cli("plan_and_preprocess", ["-t", 97, "--gpu-memory-gb", 0.25, "--base-channels", 4, "--no-progress"],
                   cli_env(raw_root))
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.describe()
    assert image.name in res.message_lines()[-1] and "outside [0.01, 100] mm" in res.message_lines()[-1], \
        res.describe()


def test_default_bound_is_a_fraction_of_physical_memory(monkeypatch):
    monkeypatch.delenv(resample_bound.MAX_RESAMPLED_ENV, raising=False)
    total = resample_bound.physical_memory_bytes()
    assert total > 0
    assert resample_bound.max_resampled_bytes() == int(total * resample_bound.MEMORY_FRACTION)
    monkeypatch.setattr(resample_bound, "physical_memory_bytes", lambda: 0)
    assert resample_bound.max_resampled_bytes() == 8 * GIB
    monkeypatch.setenv(resample_bound.MAX_RESAMPLED_ENV, "lots")
    with pytest.raises(InputError, match="must be a positive number of GB"):
        resample_bound.max_resampled_bytes()


def test_physical_memory_unknown_to_the_os_is_zero(monkeypatch):
    def no_sysconf(_name):
        raise ValueError("unknown")

    monkeypatch.setattr(resample_bound.os, "sysconf", no_sysconf)
    assert resample_bound.physical_memory_bytes() == 0


def test_sheared_sform_with_a_qform_warns_naming_the_file(tmp_path, caplog):
    from c2fnas_auto.data.image_io import read_volume

    path = tmp_path / "sheared.nii.gz"
    img = nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4))
    img.set_qform(np.diag([1.0, 1.0, 2.0, 1.0]), code=1)
    sheared = np.diag([1.0, 1.0, 2.0, 1.0])
    sheared[0, 2] = 0.5  # x depends on the slice: a sheared grid
    img.set_sform(sheared, code=1)
    img.to_filename(str(path))
    with caplog.at_level(logging.WARNING):
        read_volume(path)
        read_volume(path)
    hits = [r.getMessage() for r in caplog.records if "sform and qform disagree" in r.getMessage()]
    assert len(hits) == 1 and str(path) in hits[0], hits  # once per file
    plain = tmp_path / "plain.nii.gz"
    nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.diag([1.0, 1.0, 2.0, 1.0])).to_filename(str(plain))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        read_volume(plain)
    assert not [r for r in caplog.records if "disagree" in r.getMessage()]
