"""Issue 22 through the commands: files from others cannot run code, exhaust the machine or give
a silent wrong answer (checkpoints, stale preprocessing, prediction inputs, resume, sizes, task names).

The model zip cases (install, predict -m zip, zip budgets, a zip's network config) are in
tests/deployment/test_untrusted_zips.py.
"""

from __future__ import annotations

import json
import pathlib
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from c2fnas_auto.nas.checkpoint import FORMAT_VERSION, save_checkpoint
from c2fnas_auto.nas.network import build_network
from c2fnas_auto.paths import experiment_name, results_dir
from c2fnas_auto.utils.testing import call_cli, cli_env, diff_snapshots, snapshot

from .helpers import assert_user_error, task_folder


class CodeOnLoad:
    """Unpickling this touches `path` (the stand-in for `os.system(...)`)."""

    def __init__(self, path: pathlib.Path):
        self.path = str(path)

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.path),))


def _experiment(task) -> pathlib.Path:
    return results_dir(task.task_name, experiment_name(task.plans.plans_name, task.plans.genotype.short_id()))


def _write_fold(task, fold: int = 0) -> pathlib.Path:
    """An untrained fold-0 checkpoint of the plans genotype, written as training writes it."""
    torch.manual_seed(fold)
    net = build_network(task.plans.genotype, task.plans.network_config())
    folder = _experiment(task)
    save_checkpoint(folder / f"fold_{fold}" / "checkpoint_final.pth", network_state=net.state_dict(),
                    optimizer_state={}, scaler_state={}, epoch=1, log_state={}, plans=task.plans.to_dict(),
                    genotype=task.plans.genotype.to_dict(), network_config=task.plans.network_config().to_dict())
    return folder


TRAIN_QUICK = ["--epochs", 1, "--iters-per-epoch", 1, "--val-iters", 1, "--device", "cpu", "--num-workers", 0,
               "--no-final-validation", "--no-progress", "--batch-size", 2, "--patch-size", 8, 16, 16]


# ----------------------------------------------------------------- case 1: code in a checkpoint
def test_code_running_checkpoint_refused_by_predict_folder_and_train_continue(copy_task, tmp_path):
    torch.set_num_threads(1)
    marker = tmp_path / "code ran"
    folder = _write_fold(copy_task)
    evil = {"network_weights": {}, "payload": CodeOnLoad(marker)}
    torch.save(evil, folder / "fold_0" / "checkpoint_final.pth")
    env = cli_env(copy_task.root)
    res = call_cli("predict", ["-i", copy_task.raw_dir / "imagesTs", "-o", tmp_path / "out", "-m", folder,
                               "--device", "cpu"], env)
    assert_user_error(res, ["checkpoint_final.pth", "pathlib"], r"refused to load checkpoint.*could run code")
    assert not marker.exists() and not (tmp_path / "out").exists()

    torch.save(evil, folder / "fold_0" / "checkpoint_latest.pth")
    res = call_cli("train", ["98", 0, "--continue", *TRAIN_QUICK], env)
    assert_user_error(res, ["checkpoint_latest.pth"], r"refused to load checkpoint.*--trust-pickled-checkpoint")
    assert not marker.exists()


def test_code_running_supernet_checkpoint_refused_even_with_trust(copy_task, tmp_path):
    from c2fnas_auto.errors import C2FNASError
    from c2fnas_auto.search.fine import train_supernet
    from c2fnas_auto.utils.torch_files import trusting_pickled_files

    marker = tmp_path / "code ran"
    ckpt = tmp_path / "supernet.pth"
    torch.save({"levels": list(copy_task.plans.genotype.levels), "payload": CodeOnLoad(marker)}, ckpt)
    ctx = SimpleNamespace(seed=0, plans=copy_task.plans, network_config=copy_task.plans.network_config,
                          width_multiplier=None)
    for trusted in (False, True):
        with trusting_pickled_files(trusted), pytest.raises(C2FNASError) as err:
            train_supernet(copy_task.plans.genotype.levels, ctx, epochs=1, checkpoint=ckpt)
        text = str(err.value)
        assert "refused to load supernet checkpoint" in text and "use --overwrite" in text and "\n" not in text
        assert "--trust-pickled-checkpoint" not in text
        assert not marker.exists()


def test_trust_flag_resumes_an_older_pickled_checkpoint_with_a_warning(copy_task):
    torch.set_num_threads(1)
    env = cli_env(copy_task.root)
    res = call_cli("train", ["98", 0, *TRAIN_QUICK], env)
    assert res.returncode == 0, res.describe()
    latest = _experiment(copy_task) / "fold_0" / "checkpoint_latest.pth"
    ckpt = torch.load(latest, weights_only=True)
    assert ckpt["format_version"] == FORMAT_VERSION
    ckpt.pop("format_version")
    ckpt["logging"]["best_ema"] = np.float64(ckpt["logging"]["best_ema"])  # what older code could hold
    torch.save(ckpt, latest)
    more = [a if a != 1 or i != 1 else 2 for i, a in enumerate(TRAIN_QUICK)]  # --epochs 2
    res = call_cli("train", ["98", 0, "--continue", *more], env)
    assert_user_error(res, [str(latest)], r"refused to load checkpoint.*numpy.*--trust-pickled-checkpoint")
    res = call_cli("train", ["98", 0, "--continue", "--trust-pickled-checkpoint", *more], env)
    assert res.returncode == 0, res.describe()
    assert f"warning: {latest}: loading a pickled checkpoint" in res.stderr
    assert "resumed from checkpoint_latest.pth at epoch 1" in res.stdout
    assert torch.load(latest, weights_only=True)["format_version"] == FORMAT_VERSION  # rewritten plain


# ------------------------------------------------------------- case 3: preprocessing knows its sources
def test_changed_label_is_used_on_rerun(copy_task, caplog):
    from c2fnas_auto.preprocessing.storage import load_case

    env = cli_env(copy_task.root)
    meta = json.loads((copy_task.raw_dir / "dataset.json").read_text())
    entry = meta["training"][0]
    case_id = pathlib.Path(entry["image"]).name.split(".")[0]
    _, seg, _ = load_case(copy_task.preprocessed_dir, case_id)
    assert int((np.asarray(seg) > 0).sum()) > 0
    label = copy_task.raw_dir / entry["label"]
    old = sitk.ReadImage(str(label))
    empty = sitk.GetImageFromArray(np.zeros_like(sitk.GetArrayFromImage(old)))
    empty.CopyInformation(old)
    sitk.WriteImage(empty, str(label))
    fp_before = json.loads((copy_task.preprocessed_dir / "fingerprint.json").read_text())
    res = call_cli("plan_and_preprocess", ["-t", 98, "--gpu-memory-gb", 0.25, "--base-channels", 4,
                                           "--no-progress"], env)
    assert res.returncode == 0, res.describe()
    _, seg, props = load_case(copy_task.preprocessed_dir, case_id)
    assert int((np.asarray(seg) > 0).sum()) == 0  # the new, empty label is what training reads
    assert props["sources"][entry["label"].lstrip("./")][0] == label.stat().st_size
    assert f"recomputing the fingerprint: source files of 1 case(s) changed ({case_id})" in caplog.text
    fp_after = json.loads((copy_task.preprocessed_dir / "fingerprint.json").read_text())
    assert fp_after["foreground_intensity_statistics"] != fp_before["foreground_intensity_statistics"]
    # a second run with nothing changed reuses everything, silently
    caplog.clear()
    before = snapshot(copy_task.preprocessed_dir)
    res = call_cli("plan_and_preprocess", ["-t", 98, "--gpu-memory-gb", 0.25, "--base-channels", 4,
                                           "--no-progress"], env)
    assert res.returncode == 0 and "recomputing" not in caplog.text and "redoing" not in caplog.text
    changed = [c for c in diff_snapshots(before, snapshot(copy_task.preprocessed_dir)) if "plans.json" not in c]
    assert changed == []


def test_a_case_whose_source_changed_is_redone_under_the_same_plans(copy_task, caplog):
    """Same plans, one image rewritten (new mtime): only that case is redone, and one line says so."""
    import os

    from c2fnas_auto.planning.plans import Plans
    from c2fnas_auto.preprocessing.preprocessor import preprocess_dataset

    plans = Plans.load(copy_task.preprocessed_dir / "plans.json")
    image = sorted((copy_task.raw_dir / "imagesTr").glob("*.nii.gz"))[2]
    st = image.stat()
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns + 10 ** 9))
    counts = preprocess_dataset(copy_task.task_name, plans, num_workers=1, progress=False)
    assert counts == {"processed": 1, "skipped": 7}
    case_id = image.name[: -len(".nii.gz")]
    assert f"1 preprocessed case(s) no longer match their source files or the plans, redoing them: {case_id}" \
        in caplog.text
    # the plans' identity is in every marker too: a marker from other settings is redone
    marker = copy_task.preprocessed_dir / "data" / f"{case_id}.json"
    props = json.loads(marker.read_text())
    marker.write_text(json.dumps({**props, "settings_identity": "0" * 16}))
    assert preprocess_dataset(copy_task.task_name, plans, num_workers=1, progress=False)["processed"] == 1


# ------------------------------------------------------- case 4: prediction input checked like training input
def _nrrd_inputs(task, folder: pathlib.Path) -> dict[str, pathlib.Path]:
    folder.mkdir()
    srcs = sorted((task.raw_dir / "imagesTs").glob("*.nii.gz"))
    img = sitk.ReadImage(str(srcs[0]))
    out = {}
    for name, make in (("good", lambda a: a), ("nan", lambda a: _with_nan(a))):
        arr = make(sitk.GetArrayFromImage(img).astype(np.float32))
        new = sitk.GetImageFromArray(arr)
        new.CopyInformation(img)
        out[name] = folder / f"{name}.nrrd"
        sitk.WriteImage(new, str(out[name]))
    out["flat"] = folder / "flat.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((20, 20), np.float32)), str(out["flat"]))  # a 2D image
    out["two"] = folder / "two.nrrd"
    sitk.WriteImage(sitk.JoinSeries([img, img]), str(out["two"]))  # 2 channels for a 1-channel model
    return out


def _with_nan(arr: np.ndarray) -> np.ndarray:
    arr = arr.copy()
    arr.flat[np.linspace(0, arr.size - 1, 8).astype(int)] = np.nan
    return arr


def test_bad_prediction_inputs_fail_alone_and_the_run_exits_non_zero(copy_task, tmp_path):
    torch.set_num_threads(1)
    _write_fold(copy_task)
    files = _nrrd_inputs(copy_task, tmp_path / "in")
    out = tmp_path / "out"
    res = call_cli("predict", ["-i", tmp_path / "in", "-o", out, "-t", 98, "-f", 0, "--device", "cpu",
                               "--disable-tta", "--file-ending", ".nrrd"], cli_env(copy_task.root))
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.describe()
    lines = res.message_lines()
    expected = {"nan": "image contains 8 NaN/inf voxel(s)", "flat": "image is 2D",
                "two": "2 channel(s), the plans expect 1"}
    for name, problem in expected.items():
        hits = [line for line in lines if line.startswith(f"case {name}: failed: {files[name]}: ")]
        assert len(hits) == 1 and problem in hits[0], (name, lines)
        assert not (out / f"{name}.nrrd").exists()
    assert "3 case(s) failed: flat, nan, two" in res.stderr
    assert (out / "good.nrrd").is_file()


def test_predict_array_refuses_non_finite_voxels(copy_task):
    from c2fnas_auto.errors import InputError
    from c2fnas_auto.inference.predictor import Predictor

    predictor = Predictor(_write_fold(copy_task), device="cpu", tta=False, progress=False)
    image = np.zeros((24, 40, 40), np.float32)
    image[0, 0, 0] = np.inf
    with pytest.raises(InputError, match="image array contains 1 NaN/inf voxel"):
        predictor.predict_array(image, spacing=(3.0, 1.0, 1.0))


# ------------------------------------------------- case 5: resume checks every output asked for
def test_continue_with_probabilities_redoes_a_case_whose_npz_is_missing(copy_task, tmp_path):
    torch.set_num_threads(1)
    _write_fold(copy_task)
    out = tmp_path / "out"
    args = ["-i", copy_task.raw_dir / "imagesTs", "-o", out, "-t", 98, "-f", 0, "--device", "cpu", "--disable-tta",
            "--save-probabilities", "--continue"]
    env = cli_env(copy_task.root)
    assert call_cli("predict", args, env).returncode == 0
    images = sorted(out.glob("*.nii.gz"))
    assert len(images) == 2
    victim, kept = images
    stem = victim.name[: -len(".nii.gz")]
    (out / f"{stem}.npz").unlink()  # what a kill between the image's and the npz's rename leaves
    (out / f"{kept.name[: -len('.nii.gz')]}.json").write_text("{cut")  # and a damaged properties file
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    res = call_cli("predict", args, env)
    assert res.returncode == 0, res.describe()
    assert (out / f"{stem}.npz").is_file()
    assert np.load(out / f"{stem}.npz")["probabilities"].shape[0] == copy_task.plans.num_classes
    assert f"{stem}.npz missing or unreadable, predicting it again" in res.stderr
    assert json.loads((out / f"{kept.name[: -len('.nii.gz')]}.json").read_text())["case_id"]
    assert victim.stat().st_mtime_ns != stamps[victim.name]
    # a run that did not ask for probabilities does not redo cases for them
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    (out / f"{stem}.npz").unlink()
    assert call_cli("predict", [a for a in args if a != "--save-probabilities"], env).returncode == 0
    assert victim.stat().st_mtime_ns == stamps[victim.name]


# --------------------------------------------------------------- case 6: sizes checked before allocation
def test_huge_plans_patch_is_refused_before_anything_is_built(copy_task, monkeypatch):
    from c2fnas_auto.training.trainer import Trainer

    def never(self):
        raise AssertionError("training setup reached: the plans' sizes were not checked")
    monkeypatch.setattr(Trainer, "setup", never)  # protect the machine if the check ever goes
    plans_file = copy_task.preprocessed_dir / "plans.json"
    plans = json.loads(plans_file.read_text())
    plans["patch_size"] = [1024, 2048, 2048]
    plans_file.write_text(json.dumps(plans))
    before = snapshot(copy_task.root)
    res = call_cli("train", ["98", 0, "--device", "cpu", "--no-progress"], cli_env(copy_task.root))
    assert_user_error(res, [str(plans_file), "patch [1024, 2048, 2048]"], r"GiB.*(more than|exceeds) this machine's")
    assert diff_snapshots(before, snapshot(copy_task.root)) == []


# --------------------------------------------------------------- case 7: task arguments
@pytest.mark.parametrize("task", ["..", ".", "../raw/Task97_Broken", "Task97_Broken/..", "raw"])
def test_task_argument_must_be_an_id_or_a_task_folder_name(raw_root, task):
    """A task laid out in the parent of C2FNAS_raw (and 'raw' itself) is not reachable by name."""
    shutil.copytree(task_folder(raw_root), raw_root, dirs_exist_ok=True)  # dataset.json etc. in root itself
    shutil.copytree(task_folder(raw_root), raw_root / "raw" / "raw", dirs_exist_ok=True)
    before = snapshot(raw_root.parent)
    res = call_cli("plan_and_preprocess", ["-t", task, "--no-progress"], cli_env(raw_root))
    assert_user_error(res, [repr(task)], r"not a task folder name \(TaskNN_\* or DatasetNNN_\*")
    assert diff_snapshots(before, snapshot(raw_root.parent)) == []
    res = call_cli("train", [task, 0, "--device", "cpu"], cli_env(raw_root))
    assert_user_error(res, [repr(task)], r"not a task folder name")
