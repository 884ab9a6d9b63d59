"""A training that never starts is named: the monitor's verdict, the dead-head probe, the
trainer's one-line warning and progress.png's shading; the warm-up restores the schedule."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from torch import nn

from c2fnas_auto.training.schedule import WARMUP_START_MOMENTUM, build_optimizer, warmed_up
from c2fnas_auto.training.start_check import (DeadHeadProbe, StartMonitor, classifier_of,
                                              dead_head_fraction_at)
from c2fnas_auto.training.trainer import Trainer, TrainerOptions

SMALL_PATCH = (8, 16, 16)


def _kill_head(network: nn.Module) -> None:
    """Every classifier input <= 0: the last instance norm's shift far below zero (with the
    public "relu" classifier no gradient then reaches anything below it)."""
    with torch.no_grad():
        network.head_expand.norm.bias.fill_(-100.0)


def test_monitor_needs_no_foreground_and_a_flat_loss():
    m = StartMonitor(patience=3, stall_tolerance=0.05)
    for loss in (0.5, -0.10, -0.11):
        m.update(loss, foreground_tp=0)
    assert not m.not_started()  # the loss still fell by 0.6 over the window: it is learning something
    m.update(-0.12, foreground_tp=0)
    assert m.not_started()  # -0.10, -0.11, -0.12: flat and no foreground
    m.update(-0.12, foreground_tp=5)
    assert not m.not_started()  # one foreground voxel predicted right: started


def test_monitor_at_the_end_of_a_run_needs_no_flat_loss():
    m = StartMonitor(patience=3)
    m.update(1.0, 0)
    m.update(0.4, 0)
    assert not m.not_started() and m.not_started(final=True)  # a short run that never predicted foreground
    m.update(0.3, 2)
    assert not m.not_started(final=True)
    for loss in (-0.04, -0.16, -0.25):  # still falling, but no foreground in the last 3 epochs
        m.update(loss, 0)
    assert not m.not_started() and m.not_started(final=True)
    assert not StartMonitor().not_started(final=True)  # nothing seen: no verdict


def test_warning_is_one_line_with_the_signals():
    m = StartMonitor(patience=2)
    m.update(-0.19, 0, 0.15)
    m.update(-0.19, 0, 0.15)
    text = m.warning()
    assert "\n" not in text and "not started" in text and "15.0%" in text and "-0.190" in text
    m2 = StartMonitor(patience=1)
    m2.update(0.1, 0)  # no classifier known: no percentage
    assert "%" not in m2.warning()


def test_dead_head_probe_measures_the_classifier_input(tiny_task):
    from c2fnas_auto.nas.network import build_network

    torch.manual_seed(0)
    config = dataclasses.replace(tiny_task.plans.network_config(), classifier="relu")
    net = build_network(tiny_task.plans.genotype, config)
    assert classifier_of(net) is net.head_classifier
    assert classifier_of(nn.parallel.DataParallel(net)) is net.head_classifier  # wrappers are unwrapped
    assert classifier_of(nn.Conv3d(1, 1, 1)) is None
    x = torch.randn(1, 1, *SMALL_PATCH)
    alive = dead_head_fraction_at(net, x)
    assert 0.0 <= alive < 0.5
    _kill_head(net)
    net.eval()
    assert dead_head_fraction_at(net, x) == 1.0
    assert not net.training  # restored
    with DeadHeadProbe(net) as probe:
        net(x)  # eval mode: not counted
    assert math.isnan(probe.fraction())
    with DeadHeadProbe(nn.Conv3d(1, 1, 1)) as probe:
        pass
    assert math.isnan(probe.fraction())


def test_trainer_warns_and_marks_a_training_that_never_starts(copy_task, capsys):
    torch.set_num_threads(1)
    plans_file = copy_task.preprocessed_dir / "plans.json"
    plans = json.loads(plans_file.read_text())
    plans["network"]["classifier"] = "relu"  # the public head, whose input can be forced <= 0
    plans_file.write_text(json.dumps(plans))
    opts = TrainerOptions(epochs=4, iters_per_epoch=3, val_iters=1, batch_size=2, device="cpu", seed=0,
                          patch_size=SMALL_PATCH, final_validation=False, progress=False, checkpoint_every=10)
    trainer = Trainer("98", 0, opts)
    trainer.setup()
    _kill_head(trainer.network)
    trainer.run()
    fold = trainer.fold_dir
    epochs = json.loads((fold / "metrics.json").read_text())["epochs"]
    assert all(e["train_foreground_tp"] == 0 and e["dead_head_fraction"] == 1.0 for e in epochs)
    assert [e["not_started"] for e in epochs] == [False, False, True, True]
    log = (fold / "training_log.txt").read_text()
    warnings = [line for line in log.splitlines() if "training has not started" in line]
    assert len(warnings) == 1  # once, when the verdict turns
    assert "100.0% of voxels" in warnings[0]
    assert "training has not started" in capsys.readouterr().out
    assert (fold / "progress.png").stat().st_size > 0


def test_trainer_does_not_warn_when_training_starts(copy_task):
    torch.set_num_threads(1)
    plans_file = copy_task.preprocessed_dir / "plans.json"
    plans = json.loads(plans_file.read_text())
    plans["network"]["cell_style"] = "residual"  # learns the tiny task within these steps
    plans_file.write_text(json.dumps(plans))
    opts = TrainerOptions(epochs=3, iters_per_epoch=10, val_iters=1, batch_size=2, device="cpu", seed=0,
                          patch_size=SMALL_PATCH, final_validation=False, progress=False, checkpoint_every=10)
    trainer = Trainer("98", 0, opts)
    trainer.run()
    epochs = json.loads((trainer.fold_dir / "metrics.json").read_text())["epochs"]
    assert not any(e["not_started"] for e in epochs)
    assert epochs[-1]["train_foreground_tp"] > 0
    assert "not started" not in (trainer.fold_dir / "training_log.txt").read_text()


def test_warmup_ramps_then_restores_the_schedule():
    net = nn.Linear(2, 1)
    opt = build_optimizer(net, lr=0.01)
    seen = []
    for step in range(4):
        with warmed_up(opt, step, 2):
            g = opt.param_groups[0]
            seen.append((g["lr"], g["momentum"]))
        assert opt.param_groups[0]["lr"] == 0.01 and opt.param_groups[0]["momentum"] == 0.99
    assert seen[0] == (pytest.approx(0.005),
                       pytest.approx(WARMUP_START_MOMENTUM + 0.5 * (0.99 - WARMUP_START_MOMENTUM)))
    assert seen[1] == (pytest.approx(0.01), pytest.approx(0.99))
    assert seen[2] == seen[3] == (0.01, 0.99)
    with pytest.raises(RuntimeError):
        with warmed_up(opt, 0, 4):
            raise RuntimeError("step failed")
    assert opt.param_groups[0]["lr"] == 0.01  # restored even when the step raises
