"""SIGTERM / SIGUSR1 during training: the running iteration finishes, checkpoint_latest is
written, the exit code is STOPPED_EXIT_CODE, and --continue goes on from there."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from c2fnas_auto.nas.checkpoint import load_checkpoint
from c2fnas_auto.paths import experiment_name
from c2fnas_auto.utils.distributed import DistContext
from c2fnas_auto.training.signals import TrainingStopped, stop_checked
from c2fnas_auto.utils.stop_signals import STOPPED_EXIT_CODE, StopFlag

FAST = ["--device", "cpu", "--num-workers", "0", "--batch-size", "2", "--val-iters", "1", "--no-progress",
        "--patch-size", "8", "16", "16", "--no-final-validation"]


def test_flag_catches_both_signals_and_restores_handlers():
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        flag = StopFlag().install()
        try:
            batches = stop_checked(iter(range(100)), flag, DistContext(), torch.device("cpu"))
            assert [next(batches), next(batches)] == [0, 1]
            os.kill(os.getpid(), sig)
            os.kill(os.getpid(), signal.SIGUSR1 if sig == signal.SIGTERM else signal.SIGTERM)  # second: ignored
            with pytest.raises(TrainingStopped, match=signal.Signals(sig).name):
                next(batches)
        finally:
            flag.restore()
    assert {s: signal.getsignal(s) for s in before} == before


def _env():
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def _fold(task):
    plans = task.plans
    return task.results_root / task.task_name / experiment_name(plans.plans_name, plans.genotype.short_id()) / "fold_0"


def _logged_epochs(fold) -> int:
    try:
        return len(json.loads((fold / "metrics.json").read_text())["epochs"])
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return 0


def _signal_after_first_epoch(cmd, fold, sig, log_file) -> tuple[int, str]:
    """Start `cmd`, send `sig` once an epoch is logged, wait; returns (exit code, output)."""
    with open(log_file, "w+") as log:
        proc = subprocess.Popen(cmd, env=_env(), stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 240
            while time.time() < deadline and proc.poll() is None and _logged_epochs(fold) < 1:
                time.sleep(0.05)
            assert proc.poll() is None, "training ended before the signal"
            proc.send_signal(sig)
            rc = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        log.seek(0)
        return rc, log.read()


def _check_stopped(fold) -> int:
    """checkpoint_latest holds every logged epoch (--checkpoint-every 1000: only the stop wrote it)."""
    done = _logged_epochs(fold)
    assert load_checkpoint(fold / "checkpoint_latest.pth")["epoch"] == done >= 1
    assert not (fold / "checkpoint_final.pth").exists()
    assert not [p for p in fold.iterdir() if ".tmp-" in p.name]
    return done


TRAIN = ["-m", "c2fnas_auto.cli.train", "98", "0", "--iters-per-epoch", "3", "--checkpoint-every", "1000", *FAST]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_signal_to_a_real_training_run(copy_task, tmp_path, sig):
    fold = _fold(copy_task)
    cmd = [sys.executable, *TRAIN]
    rc, out = _signal_after_first_epoch(cmd + ["--epochs", "200"], fold, sig, tmp_path / "train.out")
    assert rc == STOPPED_EXIT_CODE, out[-2000:]
    assert f"{signal.Signals(sig).name} received" in out
    done = _check_stopped(fold)
    if sig == signal.SIGTERM:
        return
    rerun = subprocess.run(cmd + ["--epochs", str(done + 1), "--continue"], env=_env(), capture_output=True,
                           text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    assert f"resumed from checkpoint_latest.pth at epoch {done}" in rerun.stdout
    epochs = json.loads((fold / "metrics.json").read_text())["epochs"]
    assert [e["epoch"] for e in epochs] == list(range(1, done + 2))
    assert load_checkpoint(fold / "checkpoint_final.pth")["epoch"] == done + 1


def test_sigterm_to_torchrun_stops_every_rank_at_one_iteration(copy_task, tmp_path):
    """SLURM signals the launcher; torchrun forwards SIGTERM to its workers, which agree on the stop."""
    fold = _fold(copy_task)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *TRAIN,
           "--epochs", "200"]
    rc, out = _signal_after_first_epoch(cmd, fold, signal.SIGTERM, tmp_path / "torchrun.out")
    assert rc != 0  # torchrun reports its own signal, not the workers' 3
    assert "SIGTERM received" in out, out[-3000:]
    _check_stopped(fold)
