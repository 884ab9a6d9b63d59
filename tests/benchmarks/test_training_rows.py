"""Helpers of rows 3 and 4b that need no peer: the conv-only timing and the cell-style switch."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.rows.train_step import conv_seconds, our_network  # noqa: E402


def _counting_net():
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv3d(4, 2, 1))
    calls = []
    for m in net:
        if isinstance(m, torch.nn.Conv3d):
            m.register_forward_hook(lambda m, i, o: calls.append(tuple(i[0].shape)))
    return net, calls


def test_conv_seconds_times_each_conv_at_its_own_shape_and_leaves_no_trace():
    net, calls = _counting_net()
    x = torch.randn(2, 1, 4, 8, 8)
    hooks_before = [len(m._forward_pre_hooks) for m in net]
    t = conv_seconds(net, x, repeats=2)
    assert t > 0
    # one probe forward (2 convs), then each conv alone twice, at the shape it saw there
    assert calls[:2] == [(2, 1, 4, 8, 8), (2, 4, 4, 8, 8)]
    assert sorted(calls[2:]) == sorted([(2, 1, 4, 8, 8)] * 2 + [(2, 4, 4, 8, 8)] * 2)
    assert [len(m._forward_pre_hooks) for m in net] == hooks_before  # its hooks are removed
    assert all(p.grad is None for p in net.parameters())  # the timing's gradients are dropped


def test_our_network_switches_only_the_cell_style():
    from c2fnas_auto.nas.cells import Cell, WiredCell
    from c2fnas_auto.nas.config import NetworkConfig
    from c2fnas_auto.nas.genotype import reference_genotype

    config = NetworkConfig(in_channels=1, num_classes=2, stem_channels=4, level_channels=(8, 8, 8, 8))
    plans = SimpleNamespace(genotype=reference_genotype(), network_config=lambda: config)
    default, _ = our_network(plans)
    residual, residual_config = our_network(plans, cell_style="residual")
    residual_config.check_patch((16, 32, 32))
    assert isinstance(default.cells[0], WiredCell) and isinstance(residual.cells[0], Cell)
    assert residual.config.level_channels == config.level_channels and residual.genotype.ops == default.genotype.ops
    assert config.cell_style == "c2fnas"  # the plans' own config is not changed


def test_a_failing_option_side_is_recorded_and_the_others_still_run():
    from benchmarks.rows.train_iterations import option_steppers

    calls = []

    def make(name):
        if name == "broken_build":
            raise RuntimeError("cannot build\nsecond line")

        def step():
            calls.append(name)
            if name == "compile":  # as torch.compile fails: lazily, on the first call
                raise RuntimeError("InductorError: ValueRangeError: Invalid ranges [0:-1]")
        return step

    steps, failed = option_steppers(make, ["bf16", "compile", "broken_build", "ncdhw"])
    assert sorted(steps) == ["bf16", "ncdhw"]
    assert failed == {"compile": "RuntimeError: InductorError: ValueRangeError: Invalid ranges [0:-1]",
                      "broken_build": "RuntimeError: cannot build"}
    assert calls == ["bf16", "compile", "ncdhw"]  # each working side was warmed up once
    steps["bf16"]()
    assert calls[-1] == "bf16"


@pytest.mark.parametrize("fast", [False, True, None])
def test_a_bf16_side_is_skipped_only_where_the_cpu_has_no_fast_bf16_convolution(monkeypatch, fast):
    from benchmarks.common import option_skipped
    from c2fnas_auto.nas import execution

    monkeypatch.setattr(execution, "cpu_bf16_is_fast", lambda: fast)
    for fields in ({"precision": "bf16"}, {"precision": "bf16", "channels_last": False}):
        why = option_skipped(fields)
        assert (why is not None) == (fast is False)
        if why:
            assert why.startswith("not measured") and "bf16" in why and "\n" not in why
    assert option_skipped({"compile": True}) is None and option_skipped({"channels_last": False}) is None
    from benchmarks.common import skipped_sides
    from benchmarks.rows.train_iterations import OPTION_SIDES

    skipped = skipped_sides(OPTION_SIDES)
    assert sorted(skipped) == (["bf16", "bf16_ncdhw"] if fast is False else [])
