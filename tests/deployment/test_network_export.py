"""TorchScript / ONNX export of a trained fold, checked against PyTorch at export time."""

from __future__ import annotations

import json

import pytest
import torch

from c2fnas_auto.cli.export_model import main as export_main
from c2fnas_auto.deployment.errors import DeploymentError
from c2fnas_auto.deployment.network_export import (ATOL, RTOL, AxisPermuted, compare, example_input,
                                                   exportable_copy, export_network)
from c2fnas_auto.deployment.trained import load_trained_fold


def _reference(trained_task, x):
    fold = load_trained_fold(trained_task.experiment_dir, "0", "final")
    with torch.no_grad():
        return fold, fold.network(x)


def test_torchscript_cli_file_reproduces_pytorch_on_another_shape(trained, tmp_path, capsys):
    out = tmp_path / "model.ts"
    assert export_main(["-t", "98", "--format", "torchscript", "-o", str(out), "-f", "0"]) == 0
    assert "max |difference|" in capsys.readouterr().out
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["export_check"]["passed"] and card["output"]["labels"] == trained.plans.labels
    loaded = torch.jit.load(str(out))
    # a shape other than the traced patch: the file must not be frozen to it
    x = example_input(trained.plans.num_channels, (16, 32, 32), seed=3).repeat(2, 1, 1, 1, 1)
    fold, ref = _reference(trained, x)
    with torch.no_grad():
        got = loaded(x)
    assert got.shape == ref.shape
    assert float((got - ref).abs().max()) <= ATOL + RTOL * float(ref.abs().max())


def test_onnx_file_reproduces_pytorch(trained, tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="ONNX checks need the [deploy] extra (onnxruntime)")
    pytest.importorskip("onnx", reason="ONNX export needs the [deploy] extra (onnx)")
    out = tmp_path / "model.onnx"
    assert export_main(["-t", "98", "--format", "onnx", "-o", str(out)]) == 0
    x = example_input(trained.plans.num_channels, (16, 32, 48), seed=4)
    fold, ref = _reference(trained, x)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"image": x.numpy()})[0])
    assert float((got - ref).abs().max()) <= ATOL + RTOL * float(ref.abs().max())
    assert json.loads(out.with_suffix(".json").read_text())["export_check"]["format"] == "onnx"


def test_a_wrong_export_is_refused_and_nothing_is_written(trained, tmp_path, monkeypatch):
    import c2fnas_auto.deployment.network_export as ne

    fold = load_trained_fold(trained.experiment_dir, "0", "final")
    real = ne.check_torchscript

    def corrupted(network, ts_file, example):  # what a faulty exporter would produce
        check = real(network, ts_file, example)
        check.max_abs_difference = 1.0
        return check

    monkeypatch.setattr(ne, "check_torchscript", corrupted)
    with pytest.raises(DeploymentError, match="differs from PyTorch"):
        export_network(fold.network, trained.plans.num_channels, trained.plans.patch_size, "torchscript",
                       tmp_path / "bad.ts")
    assert list(tmp_path.iterdir()) == []


def test_compare_rejects_shape_mismatch_and_unknown_format(tmp_path):
    with pytest.raises(DeploymentError, match="shape"):
        compare("onnx", torch.zeros(1, 2, 4, 4, 4), torch.zeros(1, 2, 4, 4, 2))
    with pytest.raises(DeploymentError, match="unknown network format"):
        export_network(torch.nn.Identity(), 1, (4, 4, 4), "tensorrt", tmp_path / "x")


def test_missing_onnx_packages_give_one_line(trained, tmp_path, monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def no_onnx(name, *args, **kwargs):
        if name in ("onnx", "onnxruntime"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnx)
    assert export_main(["-t", "98", "--format", "onnx", "-o", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert "c2fnas-auto[deploy]" in err and len(err.splitlines()) == 1
    fold = load_trained_fold(trained.experiment_dir, "0", "final")
    from c2fnas_auto.deployment.network_export import check_onnx

    with pytest.raises(DeploymentError, match="onnxruntime"):
        check_onnx(fold.network, tmp_path / "m.onnx", example_input(1, (8, 16, 16)))


def test_axis_permutation_round_trip():
    net = torch.nn.Conv3d(1, 2, (1, 3, 5), padding=(0, 1, 2))
    x = torch.randn(1, 1, 6, 8, 10)
    wrapped = AxisPermuted(net, [2, 1, 0])  # the network sees (z, y, x) of an (x, y, z) input
    out = wrapped(x)
    assert out.shape == (1, 2, 6, 8, 10)
    assert torch.allclose(out, net(x.permute(0, 1, 4, 3, 2)).permute(0, 1, 4, 3, 2))
    assert isinstance(exportable_copy(net), torch.nn.Conv3d)  # nothing to swap: a plain copy


def test_export_cli_errors_are_one_line(trained, tmp_path, capsys):
    assert export_main(["-t", "98", "--format", "torchscript", "-o", str(tmp_path / "m.ts"), "-f", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert "checkpoint not found" in err and len(err.splitlines()) == 1
    assert export_main(["-m", str(tmp_path / "nowhere"), "--format", "onnx", "-o", str(tmp_path / "m.onnx")]) == 2
    assert "nowhere" in capsys.readouterr().err
