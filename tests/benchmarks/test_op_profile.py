"""The per-op profile's grouping and the accuracy check's verdict (no peers, no timing)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.op_profile import (  # noqa: E402
    GROUPS, NORM_RANGE, UPSAMPLE_RANGE, classify, make_step, make_window, markdown, profiled)
from benchmarks.precision_accuracy import main as accuracy_main, summary, verdict  # noqa: E402


def test_range_names_are_the_networks():
    from c2fnas_auto.nas.layout import NORM_RANGE as NET_NORM
    from c2fnas_auto.nas.ops import UPSAMPLE_RANGE as NET_RANGE

    assert UPSAMPLE_RANGE == NET_RANGE and NORM_RANGE == NET_NORM


def test_ops_go_to_their_group_by_phase_node_and_outermost_aten_op():
    assert classify(["aten::mkldnn_convolution", "aten::_convolution", "aten::conv3d", "phase:forward"]) \
        == "conv forward"
    assert classify(["aten::add_", "aten::convolution_backward", "ConvolutionBackward0",
                     "autograd::engine::evaluate_function: ConvolutionBackward0", "phase:backward"]) == "conv backward"
    assert classify(["aten::native_batch_norm", "aten::batch_norm", "aten::instance_norm"]) == "norm"
    assert classify(["aten::upsample_trilinear3d", "phase:forward"]) == "upsampling"
    assert classify(["aten::lerp", UPSAMPLE_RANGE, "phase:forward"]) == "upsampling"
    assert classify(["aten::cat", UPSAMPLE_RANGE, "phase:forward"]) == "upsampling"
    assert classify(["aten::lerp", "LerpBackward1", "autograd::engine::evaluate_function: LerpBackward1"]) \
        == "upsampling"
    assert classify(["aten::addcmul", "InstanceNormNDHWC", NORM_RANGE, "phase:forward"]) == "norm"
    assert classify(["aten::mul", "autograd::engine::evaluate_function: InstanceNormNDHWCBackward"]) == "norm"
    assert classify(["aten::copy_", "aten::cat"]) == "concatenation/copies"
    assert classify(["aten::relu_"]) == "activation"
    assert classify(["aten::mul", "phase:loss"]) == "loss"
    assert classify(["aten::add_", "phase:optimizer"]) == "optimizer"
    assert classify(["aten::add"]) == GROUPS[-1]
    assert classify(["autograd::engine::evaluate_function: UpsampleTrilinear3DBackward0"]) == "upsampling"


def test_a_profiled_step_and_window_fill_the_groups():
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.InstanceNorm3d(4), torch.nn.ReLU(),
                              torch.nn.Upsample(scale_factor=2, mode="trilinear"), torch.nn.Conv3d(4, 2, 1))
    x, y = torch.randn(2, 1, 4, 8, 8), torch.randint(0, 2, (2, 8, 16, 16))
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    step = make_step(net, x, y, torch.nn.CrossEntropyLoss(), opt, torch.device("cpu"))
    groups, wall = profiled(step, "cpu")
    for g in ("conv forward", "conv backward", "norm", "activation", "upsampling", "loss", "optimizer"):
        assert groups[g] > 0, g
    window, _ = profiled(make_window(net, x, torch.device("cpu")), "cpu")
    assert window["conv forward"] > 0 and window["conv backward"] == 0
    table = markdown({"device": "cpu", "conditions": "test", "sides": {
        "a": {"step": {"groups": groups, "wall_seconds": wall}, "window": {"groups": window, "wall_seconds": 0.1}}}})
    assert "| conv backward |" in table and "One inference window" in table


def test_accuracy_verdict_uses_the_seed_noise():
    assert verdict({"fp32": [0.80, 0.84], "bf16": [0.81, 0.83]}, "bf16")["status"] == "within seed noise"
    assert verdict({"fp32": [0.80, 0.81], "bf16": [0.60, 0.61]}, "bf16")["status"] == "outside seed noise"
    assert verdict({"fp32": [0.8], "bf16": [0.8]}, "bf16")["status"] == "needs at least 2 seeds"
    assert verdict({"fp32": [0.8]}, "bf16")["status"] == "missing"


def test_accuracy_summary_checks_each_label_and_leaves_out_unscored_seeds():
    def job(mean, organ, lesion):
        return {"mean_fg_dice": mean, "class_dice": {"1": organ, "2": lesion}}

    jobs = {"fp32": [job(0.6, 0.9, 0.3), job(0.62, 0.92, 0.32), job(0.61, 0.91, None)],
            "bf16": [job(0.61, 0.91, 0.0), job(0.6, 0.9, 0.01), job(0.6, 0.9, 0.02)]}
    out = summary(jobs, "bf16")
    assert out["status"] == "within seed noise" and out["per_label"]["1"]["status"] == "within seed noise"
    assert out["per_label"]["2"]["status"] == "outside seed noise", "the lesion lost: the mean alone hides it"
    assert abs(out["per_label"]["2"]["mean_fp32"] - 0.31) < 1e-12 and out["per_label"]["2"]["seeds"] == 3


def test_accuracy_results_of_another_budget_are_refused_not_mixed(tmp_path, monkeypatch, capsys):
    import json

    for var in ("C2FNAS_raw", "C2FNAS_preprocessed", "C2FNAS_results"):
        monkeypatch.setenv(var, str(tmp_path / var))  # the tool points them at its workdir
    out = tmp_path / "acc.json"
    out.write_text(json.dumps({"budget": {"profile": "tiny", "epochs": 1, "iters_per_epoch": 2}, "jobs": {}}))
    assert accuracy_main(["--profile", "tiny", "--epochs", "3", "--out", str(out),
                          "--workdir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(out) in err and "'epochs': 3" in err
