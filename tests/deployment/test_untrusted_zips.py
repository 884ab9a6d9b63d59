"""Model zips from someone else: no code runs, no machine is exhausted, sizes are checked.

Each crafted zip is a real exported model with one thing changed, so every other check
passes and the one under test is what refuses it.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import zipfile

import pytest
import torch

from c2fnas_auto.cli.export_model import main as export_main
from c2fnas_auto.cli.install_model import main as install_main
from c2fnas_auto.cli.predict import main as predict_main
from c2fnas_auto.deployment.errors import DeploymentError
from c2fnas_auto.deployment.model_zip import MANIFEST
from c2fnas_auto.deployment.zip_limits import ZipLimits, copy_bounded
from c2fnas_auto.errors import InputError

FOLD0 = "fold_0/checkpoint_final.pth"


class CodeOnLoad:
    """Unpickling this touches `path`: the stand-in for `os.system(...)` in a hostile checkpoint."""

    def __init__(self, path: pathlib.Path):
        self.path = str(path)

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.path),))


@pytest.fixture(scope="module")
def exported(trained_task, tmp_path_factory):
    from tests.conftest import _set_roots

    out = tmp_path_factory.mktemp("untrusted") / "model.zip"
    _set_roots(trained_task.root)
    assert export_main(["-t", "98", "-o", str(out), "--experiment", trained_task.experiment_dir.name]) == 0
    return out


@pytest.fixture
def fresh_results(trained, tmp_path):
    fresh = tmp_path / "results"
    fresh.mkdir()
    os.environ["C2FNAS_results"] = str(fresh)
    return fresh


def _rewrite(src, dst, mutate):
    """Copy a zip member by member; `mutate(name, data)` returns the new data."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, mutate(info.filename, zin.read(info.filename)))
    return dst


def _with_checkpoint(src, dst, change):
    """The zip with its fold-0 checkpoint loaded, changed by `change(ckpt)` and saved back (pickle allowed)."""
    def mutate(name, data):
        if not name.endswith(FOLD0):
            return data
        ckpt = torch.load(io.BytesIO(data), weights_only=True)
        change(ckpt)
        buf = io.BytesIO()
        torch.save(ckpt, buf)
        return buf.getvalue()
    return _rewrite(src, dst, mutate)


def _one_line(capsys, *needles):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, (n, err)
    return err


# ------------------------------------------------------------------ case 1: code in a checkpoint
def test_code_running_checkpoint_is_refused_by_install_and_predict(trained, exported, fresh_results, tmp_path,
                                                                  capsys):
    marker = tmp_path / "code ran"
    evil = _with_checkpoint(exported, tmp_path / "evil.zip", lambda c: c.update(payload=CodeOnLoad(marker)))
    assert install_main([str(evil)]) == 2
    _one_line(capsys, str(evil), "refused to load checkpoint", "pathlib", "--trust-pickled-checkpoint")
    assert not marker.exists() and list(fresh_results.iterdir()) == []
    out = tmp_path / "out"
    assert predict_main(["-i", str(trained.raw_dir / "imagesTs"), "-o", str(out), "-m", str(evil),
                         "--device", "cpu"]) == 2
    _one_line(capsys, "refused to load checkpoint")
    assert not marker.exists() and not out.exists()


def test_trust_flag_loads_an_old_pickled_checkpoint_with_a_warning(trained, exported, fresh_results, tmp_path,
                                                                   capsys):
    """An older checkpoint holding a numpy scalar (not code): refused by default, installed with
    the flag and a warning naming the file; the export then writes it in the new format."""
    import numpy as np

    old = _with_checkpoint(exported, tmp_path / "old.zip", lambda c: (c.pop("format_version"),
                                                                      c.update(epoch=np.int64(1))))
    assert install_main([str(old)]) == 2
    _one_line(capsys, "numpy")
    assert install_main([str(old), "--trust-pickled-checkpoint"]) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and FOLD0.split("/")[1] in err and "--trust-pickled-checkpoint" in err
    from c2fnas_auto.nas.checkpoint import FORMAT_VERSION, load_checkpoint

    installed = next(fresh_results.glob(f"*/*/{FOLD0}"))
    with pytest.raises(InputError, match="refused to load"):
        load_checkpoint(installed)  # still the old file: the flag is needed each time
    again = tmp_path / "again.zip"
    assert export_main(["-m", str(installed.parent.parent), "-o", str(again), "--trust-pickled-checkpoint"]) == 0
    with zipfile.ZipFile(again) as zf:
        name = next(n for n in zf.namelist() if n.endswith(FOLD0))
        ckpt = torch.load(io.BytesIO(zf.read(name)), weights_only=True)
    assert ckpt["format_version"] == FORMAT_VERSION and ckpt["epoch"] == 1


# ------------------------------------------------------------------ case 2: zip bombs
def _padded_manifest(src, dst, pad: int):
    return _rewrite(src, dst, lambda n, d: d + b" " * pad if n == MANIFEST else d)


def test_zip_budgets_refuse_bombs_with_one_line(trained, exported, fresh_results, tmp_path, capsys):
    # summed declared size: 8 MiB of zeros (compressing to ~8 KB) added to a member, against a
    # budget of the real model's size + 1 MiB
    with zipfile.ZipFile(exported) as zf:
        real = sum(i.file_size for i in zf.infolist())
    bomb = _rewrite(exported, tmp_path / "bomb.zip",
                    lambda n, d: d + b"\0" * (8 << 20) if n.endswith("fold_0/validation/summary.json") else d)
    assert bomb.stat().st_size < exported.stat().st_size + (64 << 10)
    budget = (real + (1 << 20)) / 2 ** 30
    assert install_main([str(bomb), "--max-zip-size-gb", str(budget)]) == 2
    _one_line(capsys, str(bomb), "MiB uncompressed, over the limit of", "--max-zip-size-gb")
    # entry count
    many = _rewrite(exported, tmp_path / "many.zip", lambda n, d: d)
    with zipfile.ZipFile(many, "a") as zf:
        for i in range(30):
            zf.writestr(f"Task98_Synthetic/extra_{i}.txt", b"")
    assert install_main([str(many), "--max-zip-entries", "20"]) == 2
    _one_line(capsys, str(many), "entries, over the limit of 20", "--max-zip-entries")
    # a manifest padded with whitespace to 2 MiB (1 MiB cap), compressing to a few KB
    padded = _padded_manifest(exported, tmp_path / "padded.zip", 2 << 20)
    assert install_main([str(padded)]) == 2
    _one_line(capsys, str(padded), f"{MANIFEST} declares", "limit of 1048576 bytes for a manifest")
    assert list(fresh_results.iterdir()) == []
    # predict -m applies the same budgets
    assert predict_main(["-i", str(trained.raw_dir / "imagesTs"), "-o", str(tmp_path / "out"), "-m", str(padded)]) == 2
    _one_line(capsys, "for a manifest")
    # genuinely large: raising the caps by flag installs it
    assert install_main([str(exported), "--max-zip-entries", "50", "--max-zip-size-gb", str(budget)]) == 0
    assert install_main([str(exported), "--max-zip-size-gb", "0"]) == 2
    _one_line(capsys, "must be positive")


def test_manifest_bytes_and_written_bytes_are_capped_whatever_the_headers_say(tmp_path):
    """Declared sizes can lie: the manifest read and every extraction copy stop at the cap."""
    z = tmp_path / "m.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr(MANIFEST, b"{" + b" " * 100 + b"}")
    limits = ZipLimits(max_manifest_bytes=50)
    with zipfile.ZipFile(z) as zf, pytest.raises(DeploymentError, match="larger than the limit of 50 bytes"):
        limits.read_manifest_bytes(zf, MANIFEST, z)
    dst = io.BytesIO()
    with pytest.raises(DeploymentError,
                       match=r"m.zip: extracting wrote more than the limit .*declared sizes are wrong"):
        copy_bounded(io.BytesIO(b"x" * 3000), dst, 2000, z, limits)
    assert dst.getvalue() == b""  # the chunk over the budget is never written
    assert copy_bounded(io.BytesIO(b"x" * 3000), io.BytesIO(), 3000, z, limits) == 3000


def test_extraction_counts_the_bytes_it_writes(trained, exported, tmp_path, monkeypatch):
    """A zip whose declared sizes pass the budget but whose members inflate beyond it stops
    extracting (simulated: the declared-size check is made to see less than the truth)."""
    from c2fnas_auto.deployment import model_zip

    real = ZipLimits.check_declared
    monkeypatch.setattr(ZipLimits, "check_declared", lambda self, infos, m, z: real(
        ZipLimits(max_total_bytes=10 ** 12), infos, m, z))
    with pytest.raises(DeploymentError, match="extracting wrote more than the limit"):
        model_zip.extract_checked(exported, tmp_path, ZipLimits(max_total_bytes=50_000))


# ------------------------------------------------------------------ case 6: sizes from the zip
def test_network_config_wider_than_its_weights_is_refused_before_allocation(trained, exported, fresh_results,
                                                                            tmp_path, capsys, monkeypatch):
    def widen(ckpt):
        ckpt["network_config"]["stem_channels"] = 8192
        ckpt["network_config"]["level_channels"] = [8192] * len(ckpt["network_config"]["level_channels"])
    wide = _with_checkpoint(exported, tmp_path / "wide.zip", widen)
    from c2fnas_auto.nas import network

    real_build = network.build_network

    def meta_only(genotype, config):
        """Building on the meta device allocates nothing; a real build here would take GBs."""
        if torch.empty(0).device.type != "meta":
            raise AssertionError("a network was built from the unchecked config")
        return real_build(genotype, config)
    monkeypatch.setattr(network, "build_network", meta_only)
    assert install_main([str(wide)]) == 2
    _one_line(capsys, str(wide), "weights do not fit the stored network", "8192", "checked before allocating")
    assert list(fresh_results.iterdir()) == []


def test_manifest_task_must_be_a_task_folder_name(trained, exported, fresh_results, tmp_path, capsys):
    def rename(name, data):
        if name != MANIFEST:
            return data
        m = json.loads(data)
        m["task"] = "Task98\\..\\x"
        return json.dumps(m).encode()
    bad = _rewrite(exported, tmp_path / "task.zip", rename)
    assert install_main([str(bad)]) == 2
    _one_line(capsys, "not a TaskNN_* or DatasetNNN_* folder")
