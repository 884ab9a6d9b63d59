"""The per-op profile's grouping and the accuracy check's verdict (no peers, no timing)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.op_profile import GROUPS, classify, make_step, make_window, markdown, profiled  # noqa: E402
from benchmarks.precision_accuracy import verdict  # noqa: E402


def test_ops_go_to_their_group_by_phase_node_and_outermost_aten_op():
    assert classify(["aten::mkldnn_convolution", "aten::_convolution", "aten::conv3d", "phase:forward"]) \
        == "conv forward"
    assert classify(["aten::add_", "aten::convolution_backward", "ConvolutionBackward0",
                     "autograd::engine::evaluate_function: ConvolutionBackward0", "phase:backward"]) == "conv backward"
    assert classify(["aten::native_batch_norm", "aten::batch_norm", "aten::instance_norm"]) == "norm"
    assert classify(["aten::upsample_trilinear3d", "phase:forward"]) == "upsampling"
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
