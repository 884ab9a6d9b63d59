"""The rarer failure branches of the deployment package, each made to run once."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from c2fnas_auto.deployment import model_zip, monai_bundle, selection
from c2fnas_auto.deployment.errors import DeploymentError


def test_unknown_package_version_is_unknown():
    assert monai_bundle._version("c2fnas_no_such_module") == "unknown"


def test_unreadable_probabilities_name_the_file(tmp_path):
    folder = tmp_path / "exp" / "fold_0" / "validation"
    folder.mkdir(parents=True)
    (folder / "c1.npz").write_bytes(b"not an npz")
    with pytest.raises(DeploymentError, match="c1.npz: cannot read probabilities"):
        selection._probabilities(tmp_path / "exp", "0", "c1")
    with pytest.raises(DeploymentError, match="--save-probabilities"):
        selection._probabilities(tmp_path / "exp", "0", "c2")


def _tiny_zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(model_zip.MANIFEST, '{"format": "c2fnas-model", "version": 1, "task": "Task01_T", '
                                        '"experiments": [{"name": "P__0123abcd", "folds": ["0"]}], '
                                        '"files": ["c2fnas_model.json", '
                                        '"Task01_T/P__0123abcd/fold_0/checkpoint_final.pth"]}')
        zf.writestr("Task01_T/P__0123abcd/fold_0/checkpoint_final.pth", "x")
    return path


def test_read_errors_other_than_bad_zip_are_one_line(tmp_path, monkeypatch):
    z = _tiny_zip(tmp_path / "m.zip")
    assert model_zip.read_manifest(z)["task"] == "Task01_T"

    def broken(self):
        raise EOFError("cut short")

    monkeypatch.setattr(zipfile.ZipFile, "testzip", broken)
    with pytest.raises(DeploymentError, match="cannot read the zip .EOFError"):
        model_zip.read_manifest(z)


def test_extraction_failure_is_one_line(tmp_path, monkeypatch):
    z = _tiny_zip(tmp_path / "m.zip")

    def full_disk(src, dst, *args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(model_zip, "copy_bounded", full_disk)
    with pytest.raises(DeploymentError, match="extraction failed .OSError"):
        model_zip.extract_checked(z, tmp_path / "out")


def test_a_failed_move_undoes_the_install(tmp_path, monkeypatch):
    tmp = tmp_path / "tmp"
    srcs = [tmp / "A", tmp / "B"]
    for s in srcs:
        s.mkdir(parents=True)
        (s / "f").write_text(s.name)
    targets = [tmp_path / "results" / "T" / "A", tmp_path / "results" / "T" / "B"]
    targets[0].parent.mkdir(parents=True)
    targets[0].mkdir()
    (targets[0] / "f").write_text("old A")
    real_rename = Path.rename

    def rename(self, target):
        if Path(target) == targets[1]:
            raise OSError(18, "Invalid cross-device link")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(DeploymentError, match="nothing installed"):
        model_zip._move_into_place(srcs, targets, tmp)
    assert (targets[0] / "f").read_text() == "old A" and not targets[1].exists()
    assert (srcs[0] / "f").read_text() == "A"


def test_a_failed_bundle_export_leaves_no_folder(trained, tmp_path, monkeypatch):
    from c2fnas_auto.deployment.trained import load_trained_fold

    fold = load_trained_fold(trained.experiment_dir, "0", "final")

    def fail(*args, **kwargs):
        raise DeploymentError("export check failed")

    monkeypatch.setattr(monai_bundle, "save_torchscript", fail)
    with pytest.raises(DeploymentError, match="export check failed"):
        monai_bundle.write_bundle(fold.network, fold.plans, fold.genotype, fold.source(), tmp_path / "b")
    assert list(tmp_path.iterdir()) == []


def test_fold_all_is_not_cross_validation(tmp_path):
    for fold in ("0", "all"):
        (tmp_path / f"fold_{fold}" / "validation").mkdir(parents=True)
        (tmp_path / f"fold_{fold}" / "validation" / "summary.json").write_text('{"per_case": []}')
    assert list(selection.fold_summaries(tmp_path)) == ["0"]
