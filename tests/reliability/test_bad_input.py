"""Bad input at every entry point: exit code 2, one line naming the file and the problem,
no traceback, nothing written and the input untouched.

The library-level checks (each integrity rule, task resolution) are tested by their
owners in tests/data; here each rule is met through the command a user types. The
commands run in-process through their `main(argv)` (`call_cli`) because a fresh
interpreter per case would cost seconds of torch import each; the subprocess path
itself is exercised by the end-to-end and interruption tests.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import SimpleITK as sitk

from c2fnas_auto.utils.testing import call_cli, cli_env, diff_snapshots, snapshot, truncate_file

from .helpers import BROKEN_ID, E2E_ID, assert_user_error, task_folder


def call_and_check_nothing_written(root: Path, name: str, args: list, needles: list[str], problem: str,
                                   env: dict | None = None, also_watch: tuple[Path, ...] = ()) -> str:
    """Run the command (C2FNAS roots under `root` unless `env` is given); `root` and
    `also_watch` must be byte- and mtime-identical afterwards."""
    watched = [root, *also_watch]
    before = [snapshot(w) for w in watched]
    res = call_cli(name, args, env if env is not None else cli_env(root))
    line = assert_user_error(res, needles, problem)
    for w, b in zip(watched, before):
        changes = diff_snapshots(b, snapshot(w))
        assert not changes, f"{name} wrote or changed files under {w} on bad input: {changes}"
    return line


# ---------------------------------------------------------------------------------------------
# c2fnas_plan_and_preprocess on a damaged raw task
# ---------------------------------------------------------------------------------------------

def _first_case(folder: Path) -> tuple[Path, Path]:
    meta = json.loads((folder / "dataset.json").read_text())
    entry = meta["training"][0]
    return folder / entry["image"], folder / entry["label"]


def _rewrite(path: Path, array: np.ndarray, like: Path, spacing_factor: float = 1.0) -> None:
    ref = sitk.ReadImage(str(like))
    img = sitk.GetImageFromArray(array)
    if array.ndim == ref.GetDimension():
        img.CopyInformation(ref)
        img.SetSpacing(tuple(s * spacing_factor for s in ref.GetSpacing()))
    sitk.WriteImage(img, str(path))


def _truncated(folder: Path) -> tuple[list[str], str]:
    image, _ = _first_case(folder)
    truncate_file(image, 0.5)
    return [image.name], r"truncat|unreadable|corrupt|incomplete"


def _grid_mismatch(folder: Path) -> tuple[list[str], str]:
    image, label = _first_case(folder)
    _rewrite(label, sitk.GetArrayFromImage(sitk.ReadImage(str(label))), like=label, spacing_factor=1.5)
    return [label.name], r"grid|spacing"


def _missing_channel(folder: Path) -> tuple[list[str], str]:
    meta = json.loads((folder / "dataset.json").read_text())
    meta["modality"] = {"0": "CT", "1": "CT"}  # the 3D files hold one channel only
    (folder / "dataset.json").write_text(json.dumps(meta))
    image, _ = _first_case(folder)
    return [image.name], r"channel|modalit"


def _undeclared_label(folder: Path) -> tuple[list[str], str]:
    _, label = _first_case(folder)
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(label)))
    seg[0, 0, 0] = 7
    _rewrite(label, seg, like=label)
    return [label.name, "7"], r"not declared|undeclared"


def _nonfinite(value: float) -> Callable[[Path], tuple[list[str], str]]:
    def damage(folder: Path) -> tuple[list[str], str]:
        image, _ = _first_case(folder)
        arr = sitk.GetArrayFromImage(sitk.ReadImage(str(image))).astype(np.float32)
        arr[1, 2, 3] = value
        _rewrite(image, arr, like=image)
        return [image.name], r"nan|inf"
    return damage


def _image_2d(folder: Path) -> tuple[list[str], str]:
    image, _ = _first_case(folder)
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(image)))
    sitk.WriteImage(sitk.GetImageFromArray(arr[arr.shape[0] // 2]), str(image))
    return [image.name], r"2D|3D|dimension"


def _empty_dataset(folder: Path) -> tuple[list[str], str]:
    meta = json.loads((folder / "dataset.json").read_text())
    meta["training"], meta["numTraining"] = [], 0
    (folder / "dataset.json").write_text(json.dumps(meta))
    return [folder.name], r"no training"


PLAN_DAMAGE = {
    "truncated_nifti": _truncated,
    "grid_mismatch": _grid_mismatch,
    "missing_channel": _missing_channel,
    "undeclared_label": _undeclared_label,
    "nan_voxel": _nonfinite(float("nan")),
    "inf_voxel": _nonfinite(float("inf")),
    "image_2d": _image_2d,
    "empty_dataset": _empty_dataset,
}


@pytest.mark.parametrize("verify_only", [False, True], ids=["plan", "verify_only"])
@pytest.mark.parametrize("damage", list(PLAN_DAMAGE), ids=list(PLAN_DAMAGE))
def test_plan_rejects_damaged_raw_task(raw_root, damage, verify_only):
    folder = task_folder(raw_root)
    needles, problem = PLAN_DAMAGE[damage](folder)
    args = ["-t", BROKEN_ID, "-np", 1, "--gpu-memory-gb", 0.25, "--base-channels", 4, "--no-progress"]
    call_and_check_nothing_written(raw_root, "plan_and_preprocess", args + (["--verify-only"] if verify_only else []),
                                   needles, problem)
    assert not (raw_root / "preprocessed").exists() or not any((raw_root / "preprocessed").iterdir())


def test_plan_rejects_task_id_matching_nothing_or_several(raw_root):
    call_and_check_nothing_written(raw_root, "plan_and_preprocess", ["-t", 55, "--no-progress"],
                                   ["55"], r"no .*folder|not found")
    other = raw_root / "raw" / f"Dataset{BROKEN_ID:03d}_Other"
    shutil.copytree(task_folder(raw_root), other)
    call_and_check_nothing_written(raw_root, "plan_and_preprocess", ["-t", BROKEN_ID, "--no-progress"],
                                   [str(BROKEN_ID)], r"several")


# ---------------------------------------------------------------------------------------------
# genotypes that break a rule: c2fnas_genotype and c2fnas_plan_and_preprocess --genotype
# ---------------------------------------------------------------------------------------------

BAD_GENOTYPES = {
    "jump_two_levels": ({"levels": [1, 3, 4, 3, 2, 1, 1, 1, 1, 1, 1, 1]}, r"step|more than one|jump"),
    "not_ending_on_1": ({"levels": [1, 1, 2, 2, 3, 4, 3, 3, 2, 2, 2, 2]}, r"end|last"),
    "unknown_op": ({"ops": ["2d"] * 11 + ["5d"]}, r"5d|op"),
    "not_u_shaped": ({"levels": [1, 2, 3, 2, 1, 2, 3, 2, 1, 1, 1, 1]}, r"U-shape|u shape|down.*up|only up"),
}


def _bad_genotype(tmp: Path, which: str) -> tuple[Path, str]:
    from c2fnas_auto.nas.genotype import reference_genotype

    change, problem = BAD_GENOTYPES[which]
    geno = reference_genotype().to_dict()
    geno.update(change)
    path = tmp / f"bad {which}.json"
    path.write_text(json.dumps(geno))
    return path, problem


@pytest.mark.parametrize("which", list(BAD_GENOTYPES))
def test_genotype_cli_names_the_broken_rule(tmp_path, which):
    path, problem = _bad_genotype(tmp_path, which)
    png = tmp_path / "out.png"
    call_and_check_nothing_written(tmp_path, "genotype", [path, "--png", png], [path.name], problem)


def test_plan_with_bad_genotype_writes_nothing(raw_root, tmp_path):
    path, problem = _bad_genotype(tmp_path, "jump_two_levels")
    call_and_check_nothing_written(raw_root, "plan_and_preprocess",
                                   ["-t", BROKEN_ID, "--genotype", path, "--base-channels", 4, "--no-progress"],
                                   [path.name], problem)


# ---------------------------------------------------------------------------------------------
# c2fnas_train (and c2fnas_search) on a broken plans file
# ---------------------------------------------------------------------------------------------

def _plans_not_json(plans: Path) -> str:
    truncate_file(plans, 0.5)
    return r"JSON"


def _plans_negative_patch(plans: Path) -> str:
    d = json.loads(plans.read_text())
    d["patch_size"] = [-d["patch_size"][0]] + list(d["patch_size"][1:])
    plans.write_text(json.dumps(d, indent=2))
    return r"patch"


def _plans_bad_genotype(plans: Path) -> str:
    d = json.loads(plans.read_text())
    d["genotype"]["levels"] = [1, 3, 4, 3, 2, 1, 1, 1, 1, 1, 1, 1]
    plans.write_text(json.dumps(d, indent=2))
    return r"level|step"


PLANS_DAMAGE = {"not_json": _plans_not_json, "negative_patch": _plans_negative_patch,
                "bad_genotype": _plans_bad_genotype}

TRAIN_ARGS = ["--epochs", 1, "--iters-per-epoch", 1, "--device", "cpu", "--num-workers", 0, "--no-progress"]
SEARCH_ARGS = ["--coarse-candidates", 1, "--min-epochs", 1, "--fine-epochs", 0, "--generations", 1,
               "--iters-per-epoch", 1, "--device", "cpu"]


@pytest.mark.parametrize("damage", list(PLANS_DAMAGE))
def test_train_rejects_broken_plans(copy_task, damage):
    plans = copy_task.preprocessed_dir / "plans.json"
    problem = PLANS_DAMAGE[damage](plans)
    call_and_check_nothing_written(copy_task.root, "train", [copy_task.task_name, 0, *TRAIN_ARGS],
                                   ["plans.json"], problem)


@pytest.mark.parametrize("damage", ["not_json", "negative_patch"])
def test_search_rejects_broken_plans(copy_task, damage):
    plans = copy_task.preprocessed_dir / "plans.json"
    problem = PLANS_DAMAGE[damage](plans)
    call_and_check_nothing_written(copy_task.root, "search", ["-t", copy_task.task_name, *SEARCH_ARGS],
                                   ["plans.json"], problem)


def test_train_rejects_bad_genotype_option(copy_task, tmp_path):
    path, problem = _bad_genotype(tmp_path, "unknown_op")
    call_and_check_nothing_written(copy_task.root, "train", [copy_task.task_name, 0, "--genotype", path, *TRAIN_ARGS],
                                   [path.name], problem)


# ---------------------------------------------------------------------------------------------
# c2fnas_predict with a trained model (the end-to-end fixture's)
# ---------------------------------------------------------------------------------------------

def _predict_args(trained_task, inp: Path, out: Path) -> list:
    return ["-i", inp, "-o", out, "-t", E2E_ID, "-f", 0, "--device", "cpu", "--disable-tta"]


def test_predict_fails_a_case_with_the_wrong_channel_count_alone(trained_task, tmp_path):
    """The case is reported failed by name (exit 1 at the end) and gets no output; the model and
    input are untouched (the other cases of the folder are still predicted)."""
    inp = tmp_path / "in"
    inp.mkdir()
    src = sorted((trained_task.task_folder / "imagesTs").glob("*.nii.gz"))[0]
    img = sitk.ReadImage(str(src))
    two = sitk.JoinSeries([img, img])  # a 4D two-channel file for a one-channel model
    sitk.WriteImage(two, str(inp / src.name))
    out = tmp_path / "out"
    before = [snapshot(inp), snapshot(trained_task.root)]
    res = call_cli("predict", _predict_args(trained_task, inp, out), trained_task.env)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.describe()
    case = src.name.split(".")[0]
    assert any(line.startswith(f"case {case}: failed: {inp / src.name}: ") and "channel" in line
               for line in res.message_lines()), res.describe()
    assert not (out / src.name).exists()
    assert [diff_snapshots(b, snapshot(w)) for b, w in zip(before, (inp, trained_task.root))] == [[], []]


def test_predict_rejects_output_inside_input(trained_task, tmp_path):
    inp = tmp_path / "in"
    shutil.copytree(trained_task.task_folder / "imagesTs", inp)
    for out in (inp / "pred", inp):
        call_and_check_nothing_written(tmp_path, "predict", _predict_args(trained_task, inp, out),
                                       [str(out)], r"inside|input folder", env=trained_task.env,
                                       also_watch=(trained_task.root,))


def test_evaluate_rejects_missing_prediction_folder(trained_task, tmp_path):
    ref = trained_task.task_folder / "labelsTs"
    missing = tmp_path / "no such predictions"
    call_and_check_nothing_written(tmp_path, "evaluate", ["-ref", ref, "-pred", missing], [str(missing)],
                                   r"not found|does not exist|no such", env=trained_task.env,
                                   also_watch=(trained_task.root,))


@pytest.mark.parametrize("name,args,var", [
    ("plan_and_preprocess", ["-t", BROKEN_ID, "--no-progress"], "C2FNAS_raw"),
    ("plan_and_preprocess", ["-t", BROKEN_ID, "--no-progress"], "C2FNAS_preprocessed"),
    ("train", [BROKEN_ID, 0, *TRAIN_ARGS], "C2FNAS_preprocessed"),
    ("search", ["-t", BROKEN_ID, *SEARCH_ARGS], "C2FNAS_preprocessed"),
    ("predict", ["-i", "in", "-o", "out", "-t", BROKEN_ID, "--device", "cpu"], "C2FNAS_results"),
], ids=["plan-raw", "plan-preprocessed", "train", "search", "predict"])
def test_missing_root_variable_is_named(raw_root, name, args, var):
    (raw_root / "in").mkdir()
    env = cli_env(raw_root)
    del env[var]
    args = [raw_root / a if a in ("in", "out") else a for a in args]
    call_and_check_nothing_written(raw_root, name, args, [var], r"not set", env=env)
