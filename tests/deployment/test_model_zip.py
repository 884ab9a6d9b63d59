"""Model files: export, install, predict from the zip without installing, and refusing bad zips."""

from __future__ import annotations

import json
import stat
import zipfile

import numpy as np
import pytest
import SimpleITK as sitk

from c2fnas_auto.cli.export_model import main as export_main
from c2fnas_auto.cli.install_model import main as install_main
from c2fnas_auto.cli.predict import main as predict_main
from c2fnas_auto.deployment.model_zip import MANIFEST, read_manifest
from c2fnas_auto.utils.testing import snapshot


@pytest.fixture(scope="module")
def model_zip(trained_task, tmp_path_factory):
    from tests.conftest import _set_roots

    out = tmp_path_factory.mktemp("zip") / "model.zip"
    _set_roots(trained_task.root)
    assert export_main(["-t", "98", "-o", str(out)]) == 0
    return out


def _members(path):
    with zipfile.ZipFile(path) as zf:
        return set(zf.namelist())


def test_zip_holds_what_a_colleague_needs(trained, model_zip):
    manifest = read_manifest(model_zip)
    names = _members(model_zip)
    assert {e["name"] for e in manifest["experiments"]} == {trained.experiment_dir.name, trained.other_dir.name}
    for e in manifest["experiments"]:
        base = f"{trained.task_name}/{e['name']}"
        for rel in ("plans.json", "genotype.json", "dataset.json", "fingerprint.json"):
            assert f"{base}/{rel}" in names, rel
        for fold in ("0", "1"):
            assert f"{base}/fold_{fold}/checkpoint_final.pth" in names
            assert f"{base}/fold_{fold}/postprocessing.json" in names
        assert e["cv_folds"] == ["0", "1"] and 0 <= e["cv_foreground_dice"] <= 1
    with zipfile.ZipFile(model_zip) as zf:
        genotype = json.loads(zf.read(f"{trained.task_name}/{trained.other_dir.name}/genotype.json"))
        readme = zf.read("README.md").decode()
    assert genotype["provenance"]["source"].startswith("deployment tests")
    assert "CV foreground Dice" in readme and trained.other_dir.name in readme


def test_install_then_predict_by_task_and_from_zip_agree(trained, model_zip, tmp_path, capsys):
    inp = trained.raw_dir / "imagesTs"
    # straight from the zip, nothing installed
    assert predict_main(["-i", str(inp), "-o", str(tmp_path / "from_zip"), "-m", str(model_zip), "--disable-tta"]) == 0
    # install into a fresh results root, then predict by task + experiment names
    fresh = tmp_path / "results"
    import os

    os.environ["C2FNAS_results"] = str(fresh)
    assert install_main([str(model_zip)]) == 0
    assert "installed" in capsys.readouterr().out
    for d in (trained.experiment_dir, trained.other_dir):
        assert (fresh / trained.task_name / d.name / "fold_1" / "checkpoint_final.pth").is_file()
    assert not [p for p in fresh.iterdir() if p.name.startswith(".c2fnas-install")]
    assert predict_main(["-i", str(inp), "-o", str(tmp_path / "installed"), "-t", "98", "--experiment",
                         trained.experiment_dir.name, trained.other_dir.name, "--disable-tta"]) == 0
    for f in sorted(inp.glob("*.nii.gz")):
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "from_zip" / f.name)))
        b = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "installed" / f.name)))
        assert np.array_equal(a, b)
    # installing again is refused unless asked, and leaves the installed copy alone
    before = snapshot(fresh)
    assert install_main([str(model_zip)]) == 2
    assert "already installed" in capsys.readouterr().err
    assert snapshot(fresh) == before
    assert install_main([str(model_zip), "--overwrite"]) == 0


def _rewrite(src, dst, mutate):
    """Copy a zip member by member, letting `mutate(name, data)` return (name, data) or None to drop."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            out = mutate(info.filename, zin.read(info.filename))
            if out is not None:
                zout.writestr(out[0], out[1])
    return dst


def _bad_zips(model_zip, tmp_path):
    def manifest_of(fn):
        def mutate(name, data):
            if name == MANIFEST:
                m = json.loads(data)
                fn(m)
                return name, json.dumps(m)
            return name, data
        return mutate

    bad = {}
    bad["not a zip"] = tmp_path / "text.zip"
    bad["not a zip"].write_text("hello")
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(model_zip.read_bytes()[: model_zip.stat().st_size // 2])
    bad["truncated"] = truncated
    foreign = tmp_path / "foreign.zip"
    with zipfile.ZipFile(foreign, "w") as zf:
        zf.writestr("weights.pth", b"x")
    bad["foreign"] = foreign
    bad["traversal"] = _rewrite(model_zip, tmp_path / "trav.zip", lambda n, d: (n, d))
    with zipfile.ZipFile(bad["traversal"], "a") as zf:
        zf.writestr("../../evil.txt", b"owned")
    bad["absolute"] = _rewrite(model_zip, tmp_path / "abs.zip", lambda n, d: (n, d))
    with zipfile.ZipFile(bad["absolute"], "a") as zf:
        zf.writestr("/tmp/evil.txt", b"owned")
    link = _rewrite(model_zip, tmp_path / "link.zip", lambda n, d: (n, d))
    with zipfile.ZipFile(link, "a") as zf:
        info = zipfile.ZipInfo("Task98_Synthetic/link")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    bad["symlink"] = link
    bad["missing file"] = _rewrite(model_zip, tmp_path / "missing.zip",
                                   lambda n, d: None if n.endswith("fold_1/checkpoint_final.pth") else (n, d))
    bad["wrong version"] = _rewrite(model_zip, tmp_path / "version.zip", manifest_of(lambda m: m.update(version=99)))
    bad["bad checkpoint"] = _rewrite(model_zip, tmp_path / "ckpt.zip",
                                     lambda n, d: (n, b"not a checkpoint") if n.endswith("fold_0/checkpoint_final.pth")
                                     else (n, d))
    bad["outside task"] = _rewrite(model_zip, tmp_path / "outside.zip",
                                   manifest_of(lambda m: m["files"].append("other/x.json")))
    with zipfile.ZipFile(bad["outside task"], "a") as zf:
        zf.writestr("other/x.json", b"{}")
    bad["bad manifest"] = _rewrite(model_zip, tmp_path / "badjson.zip",
                                   lambda n, d: (n, b"{nope") if n == MANIFEST else (n, d))
    return bad


def test_bad_zips_give_one_line_and_install_nothing(trained, model_zip, tmp_path, capsys):
    import os

    fresh = tmp_path / "results"
    fresh.mkdir()
    os.environ["C2FNAS_results"] = str(fresh)
    expected = {"not a zip": "not a readable zip", "truncated": "not a readable zip",
                "foreign": "not a c2fnas-auto model",
                "traversal": "unsafe path", "absolute": "unsafe path", "symlink": "symbolic link",
                "missing file": "differ from its manifest", "wrong version": "version 99",
                "bad checkpoint": "cannot read checkpoint", "outside task": "outside the task folder",
                "bad manifest": "not valid JSON"}
    (tmp_path / "bad").mkdir()
    for what, path in _bad_zips(model_zip, tmp_path / "bad").items():
        assert install_main([str(path)]) == 2, what
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expected[what] in err and str(path) in err, (what, err)
        assert list(fresh.iterdir()) == [], what
        assert not (tmp_path.parent / "evil.txt").exists()
    # predict -m refuses the same way, writing no output
    assert predict_main(["-i", str(trained.raw_dir / "imagesTs"), "-o", str(tmp_path / "out"), "-m",
                         str(tmp_path / "bad" / "trav.zip")]) == 2
    assert "unsafe path" in capsys.readouterr().err and not (tmp_path / "out").exists()
    # a file that is no zip at all, whatever its name, is named as such (not "folder not found")
    (tmp_path / "weights.pth").write_bytes(b"not a zip")
    assert predict_main(["-i", str(trained.raw_dir / "imagesTs"), "-o", str(tmp_path / "out"), "-m",
                         str(tmp_path / "weights.pth")]) == 2
    err = capsys.readouterr().err.strip()
    assert "not a readable zip" in err and "weights.pth" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_export_zip_errors(trained, tmp_path, capsys):
    assert export_main(["-t", "98", "-o", str(tmp_path / "m.zip"), "-f", "4"]) == 2
    err = capsys.readouterr().err
    assert "fold(s) 4" in err and not (tmp_path / "m.zip").exists()
