"""Library-level checks of untrusted input: every refusal path of the safe loaders, sources,
size checks and task names, one line each (the command-level scenarios are in
test_untrusted_inputs.py and tests/deployment/test_untrusted_zips.py)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from c2fnas_auto.errors import InputError, TaskNotFoundError
from c2fnas_auto.utils.torch_files import load_torch_file, plain_data, save_plain, trusting_pickled_files


# ------------------------------------------------------------------ tensors and plain data only
def test_plain_data_converts_numpy_and_paths_and_rejects_objects():
    out = plain_data({"a": np.float64(0.5), np.int64(3): np.arange(3), "p": Path("x/y"), "t": (1, None),
                      "w": torch.zeros(2)})
    assert out["a"] == 0.5 and type(out["a"]) is float and out[3] == [0, 1, 2] and out["p"] == "x/y"
    assert out["t"] == (1, None) and isinstance(out["w"], torch.Tensor)
    with pytest.raises(TypeError, match=r"ckpt.log: object is not tensors or plain data"):
        plain_data({"log": object()}, "ckpt")
    with pytest.raises(TypeError, match="dict key"):
        plain_data({(1, 2): 3})


def test_load_torch_file_refusals_are_one_line(tmp_path, capsys):
    with pytest.raises(InputError, match="model.pth: checkpoint not found"):
        load_torch_file(tmp_path / "model.pth")
    ok = tmp_path / "ok.pth"
    save_plain({"x": torch.ones(1), "n": np.int64(2)}, ok)
    assert load_torch_file(ok)["n"] == 2
    cut = tmp_path / "cut.pth"
    cut.write_bytes(ok.read_bytes()[:60])
    with pytest.raises(InputError, match=r"cut.pth: cannot read checkpoint \(RuntimeError: "):
        load_torch_file(cut)
    raw = tmp_path / "raw.pth"
    raw.write_bytes(pickle.dumps({"p": Path("x")}, protocol=2))  # a bare pickle, not a torch.save file
    with pytest.raises(InputError, match=r"raw.pth: cannot read checkpoint \(not a file written by torch.save\)"):
        load_torch_file(raw)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x80\x02not a pickle at all")
    with trusting_pickled_files(), pytest.raises(InputError, match=r"garbage.pth: cannot read checkpoint"):
        load_torch_file(garbage)
    assert "warning: " in capsys.readouterr().err  # even a trusted load is announced, naming the file
    old = tmp_path / "old.pth"
    torch.save({"v": np.float64(1.5)}, old)
    with trusting_pickled_files():
        assert load_torch_file(old)["v"] == 1.5
    with pytest.raises(InputError, match="refused to load checkpoint"):  # the switch ends with its block
        load_torch_file(old)


def test_checkpoint_shape_and_version_checks(tiny_task, tmp_path):
    from c2fnas_auto.nas.checkpoint import FORMAT_VERSION, load_checkpoint, save_checkpoint_dict, trained_network
    from c2fnas_auto.nas.network import build_network

    plans = tiny_task.plans
    good = {"network_weights": build_network(plans.genotype, plans.network_config()).state_dict(),
            "plans": plans.to_dict(), "genotype": plans.genotype.to_dict(),
            "network_config": plans.network_config().to_dict()}
    f = tmp_path / "checkpoint_final.pth"
    save_plain([1, 2], f)
    with pytest.raises(InputError, match="not a c2fnas-auto checkpoint"):
        load_checkpoint(f)
    save_plain({**good, "format_version": FORMAT_VERSION + 1}, f)
    with pytest.raises(InputError, match="newer than this c2fnas-auto reads"):
        load_checkpoint(f)
    bad_config = dict(good["network_config"], level_channels=["wide"] * 4)
    cases = [({"genotype": [1, 2]}, "genotype and network_config must be objects"),
             ({"network_config": bad_config}, r"malformed genotype or network_config \(ValueError"),
             ({"network_weights": {"x": 1}}, "network_weights is not a mapping of names to tensors"),
             ({"plans": "p"}, "plans must be an object")]
    for change, message in cases:
        save_checkpoint_dict({**good, **change}, f)
        with pytest.raises(InputError, match=f"checkpoint_final.pth: {message}"):
            trained_network(f)
    save_checkpoint_dict(good, f)
    assert trained_network(f).plans["task_name"] == plans.task_name


# ------------------------------------------------------------------ sources of derived data
def test_case_sources_of_outside_and_missing_files(tmp_path):
    from c2fnas_auto.data.dataset import Case
    from c2fnas_auto.data.sources import case_sources, changed_cases

    root = tmp_path / "task"
    (root / "imagesTr").mkdir(parents=True)
    (root / "imagesTr" / "a.nii.gz").write_bytes(b"12345")
    outside = tmp_path / "elsewhere.nii.gz"
    outside.write_bytes(b"1")
    src = case_sources(Case("a", [root / "imagesTr" / "a.nii.gz", outside], root / "labelsTr" / "a.nii.gz"), root)
    assert src["imagesTr/a.nii.gz"][0] == 5 and src[outside.as_posix()][0] == 1
    assert src["labelsTr/a.nii.gz"] == [-1, -1]
    assert changed_cases({"a": src}, {"a": src, "b": {}}) == ["b"]


def test_fingerprint_reuse_reasons(copy_task):
    import json

    from c2fnas_auto.data.dataset import load_dataset
    from c2fnas_auto.planning.pipeline import _reusable_fingerprint

    path = copy_task.preprocessed_dir / "fingerprint.json"
    dataset = load_dataset(copy_task.raw_dir)
    fp = json.loads(path.read_text())
    assert _reusable_fingerprint(path, dataset) == (fp, None)
    variants = [({**fp, "fingerprint_version": 0}, "written by another version"),
                ({**fp, "cases": fp["cases"][1:]}, "the training cases changed"),
                ({**fp, "labels": {"background": 0}}, "channels or labels changed"),
                ({**fp, "cases": [{k: v for k, v in c.items() if k != "sources"} for c in fp["cases"]]},
                 "records no source files")]
    for changed, reason in variants:
        path.write_text(json.dumps(changed))
        found, why = _reusable_fingerprint(path, dataset)
        assert found is None and reason in why
    path.write_text("{cut")
    assert _reusable_fingerprint(path, dataset) == (None, "unreadable")


def test_prediction_listing_keeps_unreadable_files_per_case(tmp_path):
    from c2fnas_auto.data.dataset import cases_from_folder

    (tmp_path / "junk.nii.gz").write_bytes(b"not an image")
    with pytest.raises(InputError, match="junk.nii.gz"):
        cases_from_folder(tmp_path, 1)
    (case,) = cases_from_folder(tmp_path, 1, per_case_problems=True)
    assert case.case_id == "junk" and "junk.nii.gz" in case.problem


# ------------------------------------------------------------------ sizes against the machine
def test_size_checks(tiny_task, monkeypatch):
    from c2fnas_auto.planning import size_check

    plans = tiny_task.plans
    cpu = torch.device("cpu")
    size_check.check_training_fits("plans.json", plans.genotype, plans.network, plans.patch_size, 2, 1, cpu)
    # the loader (8 GiB) fits, the network not
    monkeypatch.setattr(size_check, "host_memory_bytes", lambda: 64 * 2 ** 30)
    with pytest.raises(InputError, match=r"plans.json: patch \[512, 1024, 1024\].*estimated training memory .* "
                                         r"exceeds this machine's memory"):
        size_check.check_training_fits("plans.json", plans.genotype, plans.network, [512, 1024, 1024], 2, 1, cpu)
    fake = SimpleNamespace(total_memory=2 ** 30, name="Fake GPU")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: fake)
    with pytest.raises(InputError, match=r"exceeds the memory of Fake GPU \(1.0 GiB\)"):
        size_check.check_training_fits("p", plans.genotype, plans.network, [128, 256, 256], 8, 1,
                                       torch.device("cuda"), ranks=2)
    monkeypatch.setattr(size_check, "host_memory_bytes", lambda: 2 ** 30)
    with pytest.raises(InputError, match=r"ckpt.pth: its plans' patch \[512, 512, 512\] needs .* per sliding-window"):
        size_check.check_prediction_fits("ckpt.pth", [512, 512, 512], 1, 3, 2)
    monkeypatch.undo()
    monkeypatch.setattr(os, "sysconf", lambda name: (_ for _ in ()).throw(ValueError(name)))
    assert size_check.host_memory_bytes() is None  # unknown: no check rather than a wrong one
    size_check.check_prediction_fits("ckpt.pth", [512, 512, 512], 1, 3, 2)


# ------------------------------------------------------------------ task names
@pytest.mark.parametrize("name", ["..", ".", "", "Task07", "Task07_a/b", "Task07_a\\b", "Task07_..\0", "x_Task07_a"])
def test_task_names_that_are_not_one_task_folder(name, tmp_path, monkeypatch):
    from c2fnas_auto import paths

    monkeypatch.setenv("C2FNAS_preprocessed", str(tmp_path))
    with pytest.raises(TaskNotFoundError, match="not a task folder name"):
        paths.preprocessed_dir(name)


def test_plans_name_must_be_one_folder(tmp_path, monkeypatch):
    from c2fnas_auto import paths

    monkeypatch.setenv("C2FNAS_results", str(tmp_path))
    assert paths.results_dir("Task07_Pancreas", "C2FNASPlans__ab12cd34").parent.name == "Task07_Pancreas"
    with pytest.raises(TaskNotFoundError, match=r"plans or experiment name '\.\./\.\./x': must be one folder"):
        paths.results_dir("Task07_Pancreas", "../../x")
