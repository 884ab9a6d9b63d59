"""Library entry points used by the search and the demo (no files written, no CLI).

`fit` trains a given network in place with the same loader, augmentation, loss and
optimiser as the full Trainer; `score_cases` runs the shared sliding window on
preprocessed cases and returns Dice in preprocessed space, which is all the search
needs to rank candidates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from c2fnas_auto.inference.sliding_window import sliding_window_predict
from c2fnas_auto.nas.execution import ExecutionOptions, prepare_network
from c2fnas_auto.preprocessing.storage import load_case
from c2fnas_auto.training.dataloader import default_augmentation, load_cases, make_batch_iterator
from c2fnas_auto.training.loop import StepContext, default_forward, run_epoch
from c2fnas_auto.training.loss import DeepSupervisionLoss
from c2fnas_auto.training.schedule import build_optimizer, poly_lr, set_lr
from c2fnas_auto.training.start_check import StartMonitor
from c2fnas_auto.utils.device import resolve_device
from c2fnas_auto.utils.tensors import channel_argmax


def _device(device) -> torch.device:
    return device if isinstance(device, torch.device) else resolve_device(device)


def fit(network: nn.Module, plans, preprocessed_dir: str | Path, train_ids: Sequence[str], epochs: int,
        iters_per_epoch: int, device, seed: int = 0, batch_size: int | None = None,
        patch_size: Sequence[int] | None = None, num_workers: int = 0, forward_fn=None, augment: bool = True,
        progress: bool = False, augmentation: str | None = None, warmup_iterations: int = 0,
        monitor: StartMonitor | None = None, execution: ExecutionOptions = ExecutionOptions()) -> list[float]:
    """Train `network` in place (SGD + poly LR, Dice+CE, nnU-Net augmentation); mean loss per epoch.

    `augmentation` is the backend ("batchgenerators" or "device"); None picks
    `dataloader.default_augmentation(device)`, so callers such as the search get the default.
    `monitor` receives each epoch's start signals (training/start_check.py), so a caller can
    tell a training that never started from one that learned little. `execution`: how the
    network runs (nas/execution.py), the search's candidates and supernet included."""
    dev = _device(device)
    torch.manual_seed(seed)
    network.to(dev)
    prepare_network(network, execution)
    cases = load_cases(preprocessed_dir, list(train_ids))
    batches = make_batch_iterator(cases, patch_size or plans.patch_size, batch_size or plans.batch_size,
                                  seed=seed, num_workers=num_workers, augment=augment,
                                  augmentation=augmentation or default_augmentation(dev), device=dev)
    ctx = StepContext(network, build_optimizer(network), DeepSupervisionLoss(), dev,
                      forward_fn or default_forward, warmup_iterations=warmup_iterations, execution=execution)
    losses = []
    for epoch in range(epochs):
        set_lr(ctx.optimizer, poly_lr(epoch, epochs))
        stats = run_epoch(ctx, batches, iters_per_epoch, progress=progress, desc=f"epoch {epoch}")
        losses.append(stats.loss)
        if monitor is not None:
            monitor.update(stats.loss, float(np.sum(stats.tp)), stats.dead_head_fraction)
    return losses


def case_dice(pred: np.ndarray, ref: np.ndarray, num_classes: int) -> dict[int, float]:
    """Dice per foreground class; a class absent from both is left out (it says nothing)."""
    out = {}
    for c in range(1, num_classes):
        p, r = pred == c, ref == c
        denom = int(p.sum()) + int(r.sum())
        if denom:
            out[c] = 2.0 * int((p & r).sum()) / denom
    return out


@torch.no_grad()
def score_cases(network: nn.Module, plans, preprocessed_dir: str | Path, case_ids: Sequence[str], device,
                forward_fn=None, tta: bool = False, step_size: float = 0.5,
                execution: ExecutionOptions = ExecutionOptions()) -> dict:
    """Sliding-window Dice on preprocessed cases: {"mean_fg_dice", "per_case": {case: {label: dice}}}.
    Of `execution` only the precision applies: the network was prepared by whoever built it."""
    dev = _device(device)
    network.to(dev).eval()
    per_case: dict[str, dict[str, float]] = {}
    means = []
    for cid in case_ids:
        data, seg, _ = load_case(Path(preprocessed_dir), cid, mmap=False)
        logits = sliding_window_predict(network, torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32)),
                                        tuple(plans.patch_size), plans.num_classes, step_size=step_size,
                                        gaussian=True, mirror_axes=(0, 1, 2) if tta else None, device=dev,
                                        forward_fn=forward_fn, execution=execution)
        pred = channel_argmax(logits, 0).numpy()
        dice = case_dice(pred, np.asarray(seg[0]), plans.num_classes)
        per_case[cid] = {str(k): v for k, v in dice.items()}
        if dice:
            means.append(float(np.mean(list(dice.values()))))
    return {"mean_fg_dice": float(np.mean(means)) if means else 0.0, "per_case": per_case}
