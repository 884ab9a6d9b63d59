"""End-to-end training tests on the tiny synthetic task (CPU, a few seconds each)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from c2fnas_auto.cli.train import main as train_main
from c2fnas_auto.nas.checkpoint import load_checkpoint
from c2fnas_auto.paths import PLANS_FILE
from c2fnas_auto.planning.plans import Plans
from c2fnas_auto.training.schedule import poly_lr
from c2fnas_auto.training.splits import SPLITS_FILE, fold_case_ids, get_splits, make_splits
from c2fnas_auto.training.trainer import Trainer, TrainerOptions

SMALL_PATCH = (8, 16, 16)  # divisible by the tiny plans' total downsampling; keeps steps cheap
FAST = ["--device", "cpu", "--num-workers", "0", "--batch-size", "2", "--val-iters", "1", "--no-progress",
        "--patch-size", *map(str, SMALL_PATCH)]
# For runs that end in the final validation and train only a few steps: two overlapping tiles of
# the 24x40x40 cases instead of SMALL_PATCH's 80 (each mirrored 8 times), the bulk of such a run.
VALIDATION_PATCH = (16, 40, 40)
FAST_VALIDATION = [*FAST[:-3], *map(str, VALIDATION_PATCH)]


def _fold_dir(task, fold=0, genotype=None):
    """C2FNAS_results/<task>/<plans>__<genotype id>/fold_k: one folder per experiment."""
    gid = (genotype or task.plans.genotype).short_id()
    return task.results_root / task.task_name / f"{task.plans.plans_name}__{gid}" / f"fold_{fold}"


def _other_genotype(task):
    ops = ["3d" if op != "3d" else "2d" for op in task.plans.genotype.ops]
    return task.plans.genotype.with_ops(ops)


def _env():
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def test_splits_created_once_and_reused(copy_task):
    from c2fnas_auto.preprocessing.storage import list_cases

    splits = get_splits(copy_task.preprocessed_dir)
    path = copy_task.preprocessed_dir / SPLITS_FILE
    assert splits == make_splits(list_cases(copy_task.preprocessed_dir))
    stamp = path.stat().st_mtime_ns
    assert get_splits(copy_task.preprocessed_dir) == splits and path.stat().st_mtime_ns == stamp
    train, val = fold_case_ids(copy_task.preprocessed_dir, 1)
    assert (train, val) == (splits[1]["train"], splits[1]["val"])
    # an existing file is the truth, never overwritten
    custom = [{"train": splits[0]["train"][:2], "val": splits[0]["val"]}]
    path.write_text(json.dumps(custom))
    assert get_splits(copy_task.preprocessed_dir) == custom


def test_loss_falls_and_training_pseudo_dice_rises(copy_task):
    torch.set_num_threads(1)
    # residual cells learn the tiny task within these 30 steps; the default c2fnas cells' loss falls
    # too, but their pseudo Dice needs more steps than a unit test affords (the CLI tests train them)
    plans_file = copy_task.preprocessed_dir / "plans.json"
    plans = json.loads(plans_file.read_text())
    plans["network"]["cell_style"] = "residual"
    plans_file.write_text(json.dumps(plans))
    opts = TrainerOptions(epochs=3, iters_per_epoch=10, val_iters=1, batch_size=2, device="cpu", seed=0,
                          patch_size=SMALL_PATCH,
                          final_validation=False, progress=False, checkpoint_every=10)
    Trainer("98", 0, opts).run()
    epochs = json.loads((_fold_dir(copy_task) / "metrics.json").read_text())["epochs"]
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    assert epochs[-1]["train_pseudo_dice"] > epochs[0]["train_pseudo_dice"]
    assert epochs[-1]["lr"] < epochs[0]["lr"] == pytest.approx(1e-2)


def test_cli_writes_outputs_and_continue_restores_state(copy_task, capsys):
    torch.set_num_threads(1)
    rc = train_main(["98", "0", "--epochs", "2", "--iters-per-epoch", "3", "--checkpoint-every", "1",
                     *FAST_VALIDATION])
    assert rc == 0
    out = capsys.readouterr().out
    assert "epoch 2/2" in out and "pseudo Dice" in out
    fold = _fold_dir(copy_task)
    for name in ("checkpoint_latest.pth", "checkpoint_best.pth", "checkpoint_final.pth", "training_log.txt",
                 "metrics.json", "progress.png", "validation/summary.json"):
        assert (fold / name).is_file(), name
    assert "s/it" in (fold / "training_log.txt").read_text()
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    _, val_ids = fold_case_ids(copy_task.preprocessed_dir, 0)
    assert len(summary["per_case"]) == len(val_ids)
    assert len(list((fold / "validation").glob("*.nii.gz"))) == len(val_ids)

    ckpt = load_checkpoint(fold / "checkpoint_latest.pth")
    assert ckpt["epoch"] == 2
    assert {"network_weights", "optimizer_state", "grad_scaler_state", "logging", "plans", "genotype",
            "network_config"} <= set(ckpt)

    opts = TrainerOptions(epochs=4, iters_per_epoch=3, val_iters=1, batch_size=2, device="cpu",
                          patch_size=VALIDATION_PATCH, continue_training=True, final_validation=False, progress=False)
    trainer = Trainer("98", 0, opts)
    trainer.setup()
    assert trainer.start_epoch == 2
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(poly_lr(2, 4))
    restored = trainer.optimizer.state_dict()["state"]
    saved = ckpt["optimizer_state"]["state"]
    assert restored.keys() == saved.keys() and len(saved) > 0
    for k in saved:
        assert torch.equal(restored[k]["momentum_buffer"], saved[k]["momentum_buffer"])
    for name, p in trainer.network.state_dict().items():
        assert torch.equal(p, ckpt["network_weights"][name])
    trainer.run()
    epochs = json.loads((fold / "metrics.json").read_text())["epochs"]
    assert [e["epoch"] for e in epochs] == [1, 2, 3, 4]
    assert load_checkpoint(fold / "checkpoint_final.pth")["epoch"] == 4


def test_sigkill_loses_at_most_the_epochs_since_the_last_checkpoint(copy_task):
    fold = _fold_dir(copy_task)
    cmd = [sys.executable, "-m", "c2fnas_auto.cli.train", "98", "0", "--epochs", "8", "--iters-per-epoch", "2",
           "--checkpoint-every", "2", "--no-final-validation", *FAST]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    logged = 0
    try:
        while time.time() < deadline and proc.poll() is None:
            try:
                logged = len(json.loads((fold / "metrics.json").read_text())["epochs"])
            except (FileNotFoundError, json.JSONDecodeError, KeyError):
                logged = 0
            if logged >= 3:
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"training ended before it could be killed: {proc.stderr.read().decode()}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    ckpt = load_checkpoint(fold / "checkpoint_latest.pth")
    assert ckpt["epoch"] % 2 == 0 and ckpt["epoch"] >= 2 * (logged // 2)
    assert not (fold / "checkpoint_final.pth").exists()

    rerun = subprocess.run(cmd + ["--continue"], env=_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"resumed from checkpoint_latest.pth at epoch {ckpt['epoch']}" in rerun.stdout
    epochs = json.loads((fold / "metrics.json").read_text())["epochs"]
    assert [e["epoch"] for e in epochs] == list(range(1, 9))
    assert load_checkpoint(fold / "checkpoint_final.pth")["epoch"] == 8
    assert not [p for p in fold.iterdir() if ".tmp-" in p.name]


def test_two_process_gloo_run(copy_task):
    fold = _fold_dir(copy_task)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "c2fnas_auto.cli.train", "98", "0", "--epochs", "1", "--iters-per-epoch", "2",
           "--checkpoint-every", "1", "--no-final-validation", *FAST]
    run = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("epoch 1/1") == 1  # rank 0 alone reports
    ckpt = load_checkpoint(fold / "checkpoint_final.pth")
    assert ckpt["epoch"] == 1
    assert not any(k.startswith("module.") for k in ckpt["network_weights"])
    assert "batch 2 (1 per rank x 2)" in (fold / "training_log.txt").read_text()


def test_cli_errors_are_one_line(copy_task, capsys):
    assert train_main(["98", "7", *FAST]) == 2
    err = capsys.readouterr().err.strip()
    assert "fold 7 does not exist" in err and len(err.splitlines()) == 1
    assert train_main(["98", "0", "--genotype", str(copy_task.root / "missing.json"), *FAST]) == 2
    assert "missing.json" in capsys.readouterr().err
    assert train_main(["98", "0", "--epochs", "0", *FAST]) == 2
    assert "--epochs" in capsys.readouterr().err


def test_fit_and_score_cases(copy_task):
    from c2fnas_auto.nas.network import build_network
    from c2fnas_auto.training.api import fit, score_cases

    torch.set_num_threads(1)
    plans = copy_task.plans
    train_ids, val_ids = fold_case_ids(copy_task.preprocessed_dir, 0)
    torch.manual_seed(0)
    net = build_network(plans.genotype, plans.network_config())
    losses = fit(net, plans, copy_task.preprocessed_dir, train_ids, epochs=2, iters_per_epoch=4, device="cpu",
                 batch_size=2, patch_size=SMALL_PATCH)
    assert len(losses) == 2 and all(np.isfinite(losses))
    calls = []

    def forward(network, x):
        calls.append(x.shape)
        return network(x)

    scores = score_cases(net, plans, copy_task.preprocessed_dir, val_ids[:1], "cpu", forward_fn=forward)
    assert calls and set(scores["per_case"]) == set(val_ids[:1])
    assert 0.0 <= scores["mean_fg_dice"] <= 1.0


def test_continue_without_checkpoint_starts_clean(copy_task):
    opts = TrainerOptions(epochs=2, iters_per_epoch=1, device="cpu", continue_training=True, progress=False)
    trainer = Trainer(copy_task.task_name, 0, opts)  # full folder name works as well as the id
    trainer.setup()
    assert trainer.start_epoch == 0
    assert any("starting from scratch" in line for line in trainer.log.lines)
    assert opts.augmentation is None and trainer.options.augmentation == "device", \
        "the trainer resolves the default on its own copy, not on the caller's options"


def test_fit_with_deep_supervision(copy_task):
    import dataclasses

    from c2fnas_auto.nas.network import build_network
    from c2fnas_auto.training.api import fit

    torch.set_num_threads(1)
    plans = copy_task.plans
    config = dataclasses.replace(plans.network_config(), deep_supervision=True)
    net = build_network(plans.genotype, config)
    net.train()
    outputs = net(torch.zeros(1, config.in_channels, *SMALL_PATCH))
    assert isinstance(outputs, list) and len(outputs) > 1
    before = {n: p.detach().clone() for n, p in net.named_parameters() if "ds_head" in n}
    assert before
    losses = fit(net, plans, copy_task.preprocessed_dir, fold_case_ids(copy_task.preprocessed_dir, 0)[0], epochs=1,
                 iters_per_epoch=2, device="cpu", batch_size=2, patch_size=SMALL_PATCH)
    assert np.isfinite(losses[0])
    after = dict(net.named_parameters())
    assert any(not torch.equal(before[n], after[n].detach()) for n in before)  # the auxiliary heads learn


def test_cli_deep_supervision_override_trains_the_heads_and_records_them(copy_task, capsys):
    torch.set_num_threads(1)
    assert not copy_task.plans.network_config().deep_supervision  # the tiny plans' default
    rc = train_main(["98", "0", "--epochs", "1", "--iters-per-epoch", "2", "--deep-supervision", "on",
                     "--no-final-validation", *FAST])
    assert rc == 0 and "deep supervision on" in capsys.readouterr().out
    ckpt = load_checkpoint(_fold_dir(copy_task) / "checkpoint_final.pth")
    assert ckpt["network_config"]["deep_supervision"] and ckpt["plans"]["network"]["deep_supervision"]
    assert any("ds_head" in k for k in ckpt["network_weights"])
    on_disk = Plans.load(copy_task.preprocessed_dir / PLANS_FILE)
    assert not on_disk.network_config().deep_supervision, "the plans file itself is left as it was"


def test_override_genotype_gets_its_own_experiment_folder(copy_task):
    """--genotype must not overwrite the plans genotype's fold (checkpoints, validation exports)."""
    torch.set_num_threads(1)
    assert train_main(["98", "0", "--epochs", "1", "--iters-per-epoch", "1", *FAST_VALIDATION]) == 0
    plans_fold = _fold_dir(copy_task)
    before = {p.name: p.read_bytes() for p in sorted(plans_fold.rglob("*")) if p.is_file()}
    assert "checkpoint_final.pth" in before and any(n.endswith(".nii.gz") for n in before)
    other = _other_genotype(copy_task)
    other.save(copy_task.root / "other.json")
    assert train_main(["98", "0", "--epochs", "1", "--iters-per-epoch", "1", "--genotype",
                       str(copy_task.root / "other.json"), *FAST_VALIDATION]) == 0
    other_fold = _fold_dir(copy_task, genotype=other)
    assert other_fold != plans_fold and (other_fold / "checkpoint_final.pth").is_file()
    assert load_checkpoint(other_fold / "checkpoint_final.pth")["genotype"]["ops"] == list(other.ops)
    assert {p.name: p.read_bytes() for p in sorted(plans_fold.rglob("*")) if p.is_file()} == before


def test_override_genotype_memory_is_estimated_again(copy_task, capsys):
    """An override genotype over the plans' memory budget: a warning on CPU, a one-line stop on a GPU."""
    from c2fnas_auto.errors import InputError
    from c2fnas_auto.planning.plans import Plans

    plans_file = copy_task.preprocessed_dir / "plans.json"
    plans = Plans.load(plans_file)
    plans.gpu_memory_gb = 1e-4
    plans.save(plans_file)
    _other_genotype(copy_task).save(copy_task.root / "other.json")
    opts = TrainerOptions(epochs=1, iters_per_epoch=1, device="cpu", patch_size=SMALL_PATCH, progress=False,
                          genotype_file=str(copy_task.root / "other.json"))
    trainer = Trainer("98", 0, opts)
    out = capsys.readouterr().out
    assert "warning:" in out and "exceeds the plans' budget" in out and "--patch-size" in out
    trainer.device = torch.device("cuda")  # the check only reads the device type
    with pytest.raises(InputError, match="exceeds the plans' budget of 0.0001 GiB"):
        trainer._check_memory()
    # the plans genotype itself is not re-estimated (the planner fitted patch and batch to it)
    Trainer("98", 0, TrainerOptions(epochs=1, iters_per_epoch=1, device="cpu", progress=False))
    assert "warning" not in capsys.readouterr().out
