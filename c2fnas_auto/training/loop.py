"""One training epoch and one validation pass: the part `fit`, the Trainer and the search share.

Each step also counts true/false positives and false negatives per foreground class on the
full-resolution output, so a "pseudo Dice" comes for free without extra forward passes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from c2fnas_auto.nas.execution import ExecutionOptions, autocast, check_precision, grad_scaler
from c2fnas_auto.training.schedule import GRAD_CLIP, warmed_up
from c2fnas_auto.training.start_check import DeadHeadProbe
from c2fnas_auto.utils.fast_paths import fast_paths
from c2fnas_auto.utils.tensors import channel_argmax

ForwardFn = Callable[[nn.Module, torch.Tensor], "torch.Tensor | list[torch.Tensor]"]


def default_forward(network: nn.Module, x: torch.Tensor):
    return network(x)


def class_argmax() -> Callable[[torch.Tensor, int], torch.Tensor]:
    """The argmax over the class axis the fast-path switches pick: `channel_argmax` or torch's."""
    return channel_argmax if fast_paths().channel_argmax else torch.argmax


@dataclass
class StepContext:
    """Everything a training step needs.

    Of `execution` (nas/execution.py) only the precision applies here: it picks autocast and
    the grad scaler; None: fp16 AMP on CUDA when `amp`, else fp32. `precision` is the one the
    steps run at, resolved on `device` when the context is built.
    """

    network: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: nn.Module
    device: torch.device
    forward_fn: ForwardFn = default_forward
    scaler: torch.amp.GradScaler | None = None
    amp: bool = True
    warmup_iterations: int = 0  # learning rate and momentum ramp over the first steps (0: off)
    steps_done: int = 0
    execution: ExecutionOptions = ExecutionOptions()
    skipped_steps: int = 0  # bf16 steps whose gradients were not finite (see train_step)
    # how confusion_counts takes the argmax over classes, fixed when the context is built (utils/fast_paths.py)
    argmax: Callable[[torch.Tensor, int], torch.Tensor] = field(default_factory=class_argmax)
    precision: str = field(init=False)

    def __post_init__(self):
        precision = self.execution.precision
        if precision is None:
            precision = "fp16" if self.amp and self.device.type == "cuda" else "fp32"
        self.precision = check_precision(precision, self.device)
        self.amp = self.precision != "fp32"
        if self.scaler is None:
            self.scaler = grad_scaler(self.device, self.precision)

    def autocast(self):
        return autocast(self.device, self.precision)


@dataclass
class EpochStats:
    loss: float
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    seconds: float
    iterations: int
    per_class_dice: list[float] = field(default_factory=list)
    dead_head_fraction: float = float("nan")  # see training/start_check.py

    @property
    def pseudo_dice(self) -> float:
        return mean_pseudo_dice(self.tp, self.fp, self.fn)

    @property
    def seconds_per_iteration(self) -> float:
        return self.seconds / max(self.iterations, 1)


def confusion_counts(logits: torch.Tensor, target: torch.Tensor,
                     argmax: Callable[[torch.Tensor, int], torch.Tensor] = channel_argmax,
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per foreground class (1..K-1) tp, fp, fn of argmax(logits) against target (B, 1, ...).

    Runs every training step, so it is cheap: `channel_argmax` (PyTorch's argmax over the class
    axis took 48 ms of a 1.5 s step at 2 x 3 x 32 x 64 x 64) and one `bincount` of a K x (K+1)
    confusion matrix, a target outside 0..K-1 (an ignore label) in the extra column, so it
    counts as a miss for the predicted class as `pred == c & target != c` would."""
    k = logits.shape[1]
    pred = argmax(logits, 1)
    t = target[:, 0] if target.ndim == logits.ndim else target
    t = t.long()
    t = torch.where((t >= 0) & (t < k), t, torch.full_like(t, k))
    m = torch.bincount((pred * (k + 1) + t).reshape(-1), minlength=k * (k + 1)).reshape(k, k + 1)
    m = m.double().cpu().numpy()
    tp = np.diag(m)[1:].copy()
    return tp, m[1:].sum(1) - tp, m[:, 1:k].sum(0) - tp


def per_class_pseudo_dice(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> list[float]:
    """2tp / (2tp + fp + fn) per class; NaN where the class never occurred nor was predicted."""
    denom = 2 * tp + fp + fn
    return [float(2 * a / d) if d > 0 else float("nan") for a, d in zip(tp, denom)]


def mean_pseudo_dice(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> float:
    vals = [v for v in per_class_pseudo_dice(tp, fp, fn) if not np.isnan(v)]
    return float(np.mean(vals)) if vals else 0.0


def _full_res(out):
    return out[0] if isinstance(out, (list, tuple)) else out


def train_step(ctx: StepContext, batch: dict) -> tuple[float, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Forward, Dice+CE, backward with gradient clipping (AMP + GradScaler on CUDA)."""
    x = batch["data"].to(ctx.device, non_blocking=True)
    y = batch["target"].to(ctx.device, non_blocking=True)
    ctx.optimizer.zero_grad(set_to_none=True)
    with ctx.autocast():
        out = ctx.forward_fn(ctx.network, x)
        loss = ctx.loss_fn(out, y)
    ctx.scaler.scale(loss).backward()
    ctx.scaler.unscale_(ctx.optimizer)
    total_norm = torch.nn.utils.clip_grad_norm_(ctx.network.parameters(), GRAD_CLIP)
    if ctx.precision == "bf16" and not torch.isfinite(total_norm):
        # oneDNN's bf16 conv weight gradient is now and then non-finite on a CPU (torch 2.13 and
        # 2.14, small spatial extents; documentation/studies/precision_accuracy.md): skip the step, as fp16's
        # grad scaler does, instead of writing NaN into every weight
        ctx.optimizer.zero_grad(set_to_none=True)
        ctx.skipped_steps += 1
    else:
        with warmed_up(ctx.optimizer, ctx.steps_done, ctx.warmup_iterations):
            ctx.scaler.step(ctx.optimizer)
    ctx.scaler.update()
    ctx.steps_done += 1
    with torch.no_grad():
        counts = confusion_counts(_full_res(out).detach(), y, ctx.argmax)
    return float(loss.detach().item()), counts


def run_epoch(ctx: StepContext, batches: Iterator[dict], iterations: int, progress: bool = False,
              desc: str = "train") -> EpochStats:
    ctx.network.train()
    losses, tp, fp, fn = [], 0, 0, 0
    start = time.perf_counter()
    with DeadHeadProbe(ctx.network) as probe:
        for _ in tqdm(range(iterations), desc=desc, disable=not progress, leave=False, dynamic_ncols=True):
            loss, (a, b, c) = train_step(ctx, next(batches))
            losses.append(loss)
            tp, fp, fn = tp + a, fp + b, fn + c
    return EpochStats(float(np.mean(losses)) if losses else float("nan"), np.asarray(tp), np.asarray(fp),
                      np.asarray(fn), time.perf_counter() - start, iterations,
                      dead_head_fraction=probe.fraction())


@torch.no_grad()
def run_validation(ctx: StepContext, batches: Iterator[dict], iterations: int, progress: bool = False) -> EpochStats:
    """Loss and pseudo-Dice counts on `iterations` random (non-augmented) validation patches."""
    ctx.network.eval()
    losses, tp, fp, fn = [], 0, 0, 0
    start = time.perf_counter()
    for _ in tqdm(range(iterations), desc="val", disable=not progress, leave=False, dynamic_ncols=True):
        batch = next(batches)
        x = batch["data"].to(ctx.device)
        y = batch["target"].to(ctx.device)
        with ctx.autocast():
            out = _full_res(ctx.forward_fn(ctx.network, x))
            losses.append(float(ctx.loss_fn(out, y).item()))
        a, b, c = confusion_counts(out, y, ctx.argmax)
        tp, fp, fn = tp + a, fp + b, fn + c
    ctx.network.train()
    return EpochStats(float(np.mean(losses)) if losses else float("nan"), np.asarray(tp), np.asarray(fp),
                      np.asarray(fn), time.perf_counter() - start, iterations)
