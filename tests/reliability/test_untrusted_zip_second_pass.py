"""Model zips crafted as an attacker would, second pass: tensors whose storage is smaller
than their shape (stride 0), experiment names that are not experiments, fold entries that
leave the zip, and a manifest nested too deep to parse. Each attack is built here from a
real exported zip; each ends in one line, exit 2, nothing installed and no user file touched."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import torch

from c2fnas_auto.deployment.model_zip import MANIFEST, export_model_zip
from c2fnas_auto.nas.checkpoint import save_checkpoint
from c2fnas_auto.nas.network import build_network
from c2fnas_auto.paths import experiment_name, results_dir
from c2fnas_auto.utils.testing import call_cli, cli_env, diff_snapshots, snapshot

from .helpers import assert_user_error

CKPT = "checkpoint_final.pth"


def _exported(task, tmp_path: Path) -> tuple[Path, str]:
    """A genuine model zip of an untrained fold 0, and its experiment's name."""
    torch.manual_seed(0)
    net = build_network(task.plans.genotype, task.plans.network_config())
    name = experiment_name(task.plans.plans_name, task.plans.genotype.short_id())
    folder = results_dir(task.task_name, name)
    save_checkpoint(folder / "fold_0" / CKPT, network_state=net.state_dict(), optimizer_state={}, scaler_state={},
                    epoch=1, log_state={}, plans=task.plans.to_dict(), genotype=task.plans.genotype.to_dict(),
                    network_config=task.plans.network_config().to_dict())
    out = tmp_path / "genuine.zip"
    export_model_zip(task.task_name, [folder], out)
    return out, name


def _rewrite(src: Path, dst: Path, manifest=None, rename: dict[str, str] | None = None,
             replace: dict[str, bytes] | None = None, raw_manifest: bytes | None = None) -> Path:
    """A copy of `src` with its manifest (edited by `manifest(m)`), member names and contents changed."""
    rename, replace = rename or {}, replace or {}

    def renamed(text: str) -> str:
        for old, new in rename.items():
            text = text.replace(old, new)
        return text

    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            name = renamed(info.filename)
            if name == MANIFEST:
                m = json.loads(data)
                m["files"] = [renamed(f) for f in m["files"]]
                for e in m["experiments"]:
                    e["name"] = renamed(e["name"])
                if manifest is not None:
                    manifest(m)
                data = raw_manifest if raw_manifest is not None else json.dumps(m).encode()
            zout.writestr(name, replace.get(name, data))
    return dst


def _stride0_checkpoint(task, width: int) -> bytes:
    """A checkpoint whose network_config is `width` channels wide and whose weights have
    exactly that network's shapes, each expanded from one stored zero: kilobytes on disk."""
    cfg = task.plans.network_config().to_dict()
    cfg["stem_channels"] = width
    cfg["level_channels"] = [width] * len(cfg["level_channels"])
    from c2fnas_auto.nas.config import NetworkConfig

    with torch.device("meta"):
        shapes = {k: v.shape for k, v in build_network(task.plans.genotype, NetworkConfig.from_dict(cfg))
                  .state_dict().items()}
    weights = {k: torch.zeros(()).expand(s) for k, s in shapes.items()}
    ckpt = {"format_version": 2, "network_weights": weights, "plans": task.plans.to_dict(),
            "genotype": task.plans.genotype.to_dict(), "network_config": cfg, "epoch": 1}
    import io

    buf = io.BytesIO()
    torch.save(ckpt, buf)
    return buf.getvalue()


def _fresh_results(task) -> Path:
    """Empty the results root (the genuine export's source folder is not an install)."""
    import shutil

    shutil.rmtree(task.results_root)
    task.results_root.mkdir()
    return task.results_root


def test_stride0_weights_are_refused_by_install_and_predict(copy_task, tmp_path):
    genuine, name = _exported(copy_task, tmp_path)
    member = f"{copy_task.task_name}/{name}/fold_0/{CKPT}"
    payload = _stride0_checkpoint(copy_task, 4096)
    assert len(payload) < 200_000  # the attack is small; the network it describes is GBs
    evil = _rewrite(genuine, tmp_path / "stride0.zip", replace={member: payload})
    results = _fresh_results(copy_task)
    env = cli_env(copy_task.root)
    before = snapshot(results)
    res = call_cli("install_model", [evil], env)
    assert_user_error(res, [CKPT, "network_weights"], r"share memory|expanded")
    assert diff_snapshots(before, snapshot(results)) == []

    res = call_cli("predict", ["-i", copy_task.raw_dir / "imagesTs", "-o", tmp_path / "out", "-m", evil,
                               "--device", "cpu"], env)
    assert_user_error(res, [CKPT], r"share memory|expanded")
    assert not (tmp_path / "out").exists()


def test_experiment_named_search_is_refused_and_the_search_folder_kept(copy_task, tmp_path):
    genuine, name = _exported(copy_task, tmp_path)
    evil = _rewrite(genuine, tmp_path / "search.zip", rename={name: "search"})
    results = _fresh_results(copy_task)
    user_search = results / copy_task.task_name / "search"
    user_search.mkdir(parents=True)
    (user_search / "genotype.json").write_text('{"mine": true}\n')
    (user_search / "state.json").write_text('{"days of search": 3}\n')
    before = snapshot(results)
    env = cli_env(copy_task.root)
    for extra in ([], ["--overwrite"]):
        res = call_cli("install_model", [evil, *extra], env)
        assert_user_error(res, ["'search'"], r"not a '<plans>__<genotype id>' experiment")
        assert diff_snapshots(before, snapshot(results)) == []


def test_fold_entry_leaving_the_zip_is_refused(copy_task, tmp_path):
    genuine, name = _exported(copy_task, tmp_path)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / CKPT).write_bytes(b"not read")

    def escape(m):
        m["experiments"][0]["folds"] = ["0/../../../../../" + str(outside).lstrip("/") + "/x"]

    evil = _rewrite(genuine, tmp_path / "escape.zip", manifest=escape)
    results = _fresh_results(copy_task)
    before = snapshot(results)
    res = call_cli("install_model", [evil], cli_env(copy_task.root))
    assert_user_error(res, ["escape.zip", "fold"], r"not a fold number")
    assert diff_snapshots(before, snapshot(results)) == []


def test_checkpoint_of_no_listed_fold_is_refused(copy_task, tmp_path):
    genuine, name = _exported(copy_task, tmp_path)

    def second_fold_unlisted(m):
        m["files"].append(f"{copy_task.task_name}/{name}/fold_1/{CKPT}")

    with zipfile.ZipFile(genuine) as zf:
        ckpt = zf.read(f"{copy_task.task_name}/{name}/fold_0/{CKPT}")
    evil = _rewrite(genuine, tmp_path / "extra.zip", manifest=second_fold_unlisted)
    with zipfile.ZipFile(evil, "a") as zf:
        zf.writestr(f"{copy_task.task_name}/{name}/fold_1/{CKPT}", ckpt)
    res = call_cli("install_model", [evil], cli_env(copy_task.root))
    assert_user_error(res, ["fold_1"], r"belongs to no listed fold")


@pytest.mark.parametrize("task_name", ["Task98_../x", "search", "Task98_Syn thetic"])
def test_task_names_outside_the_written_form_are_refused(copy_task, tmp_path, task_name):
    genuine, _ = _exported(copy_task, tmp_path)

    def rename_task(m):
        m["task"] = task_name

    evil = _rewrite(genuine, tmp_path / "task.zip", manifest=rename_task)
    res = call_cli("install_model", [evil], cli_env(copy_task.root))
    assert_user_error(res, ["task.zip"], r"task|unsafe|outside")


def test_deeply_nested_manifest_is_one_line(copy_task, tmp_path):
    genuine, _ = _exported(copy_task, tmp_path)
    deep = b'{"format": "c2fnas-model", "version": 1, "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    evil = _rewrite(genuine, tmp_path / "deep.zip", raw_manifest=deep)
    results = _fresh_results(copy_task)
    before = snapshot(results)
    env = cli_env(copy_task.root)
    res = call_cli("install_model", [evil], env)
    assert_user_error(res, ["deep.zip", MANIFEST], r"nests")
    res = call_cli("predict", ["-i", copy_task.raw_dir / "imagesTs", "-o", tmp_path / "out", "-m", evil,
                               "--device", "cpu"], env)
    assert_user_error(res, [MANIFEST], r"nests")
    assert diff_snapshots(before, snapshot(results)) == [] and not (tmp_path / "out").exists()
