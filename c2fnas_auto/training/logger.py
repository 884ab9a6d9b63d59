"""Per-epoch metrics, the human-readable log and the progress plot of a training run.

The whole history travels inside each checkpoint, so `--continue` restores the plot and
the EMA exactly; the files are rewritten atomically every epoch from that history.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from c2fnas_auto.utils.io import atomic_write_json, atomic_write_text, save_figure

EMA_ALPHA = 0.9


@dataclass
class TrainingLog:
    epochs: list[dict] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    best_ema: float = -math.inf

    def message(self, text: str) -> str:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {text}"
        self.lines.append(line)
        return line

    @property
    def ema(self) -> float | None:
        return self.epochs[-1]["ema_pseudo_dice"] if self.epochs else None

    def add_epoch(self, record: dict) -> dict:
        """Append one epoch's metrics, filling in the EMA of the validation pseudo Dice."""
        prev = self.ema
        v = record["val_pseudo_dice"]
        record["ema_pseudo_dice"] = v if prev is None else EMA_ALPHA * prev + (1 - EMA_ALPHA) * v
        self.epochs.append(record)
        return record

    def improved(self) -> bool:
        """True (and remembered) when the latest EMA beats every earlier one."""
        if self.ema is not None and self.ema > self.best_ema:
            self.best_ema = self.ema
            return True
        return False

    def state_dict(self) -> dict:
        return {"epochs": self.epochs, "lines": self.lines, "best_ema": self.best_ema}

    @classmethod
    def from_state_dict(cls, state: dict) -> "TrainingLog":
        return cls(list(state.get("epochs", [])), list(state.get("lines", [])),
                   float(state.get("best_ema", -math.inf)))

    def write(self, folder: Path) -> None:
        """training_log.txt, metrics.json and progress.png, each atomically."""
        folder = Path(folder)
        atomic_write_text(folder / "training_log.txt", "\n".join(self.lines) + "\n")
        atomic_write_json(folder / "metrics.json", {"epochs": self.epochs, "best_ema_pseudo_dice":
                                                    None if math.isinf(self.best_ema) else self.best_ema})
        if self.epochs:
            plot_progress(self.epochs, folder / "progress.png")


def _plot_start_signals(ax, epochs: list[dict]) -> None:
    """Dead-head fraction and the train foreground true positives: both flat at their
    'never started' values (high and 0) name a training that has not started."""
    x = [e["epoch"] for e in epochs]
    ax.plot(x, [e.get("dead_head_fraction", float("nan")) for e in epochs], color="tab:red",
            label="dead-head fraction (classifier input all <= 0)")
    ax.set_ylabel("dead-head fraction")
    ax.set_ylim(0, 1)
    ax2 = ax.twinx()
    ax2.plot(x, [e.get("train_foreground_tp", float("nan")) for e in epochs], color="tab:gray", ls="--",
             label="train foreground true positives")
    ax2.set_ylabel("foreground TP voxels")
    shaded = any(e.get("not_started") for e in epochs)
    title = "start signals" + (": NOT STARTED (shaded epochs)" if shaded else "")
    ax.set_title(title, fontsize=9, color="tab:red" if shaded else "black")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="upper right", fontsize=8)


def plot_progress(epochs: list[dict], out_png: Path) -> None:
    """Losses with pseudo Dice (and EMA) on a second axis; start signals; epoch time; learning rate.

    Epochs judged 'not started' (training/start_check.py) are shaded red in the first two panels."""
    # start-up: matplotlib costs about 1 s; the Agg backend is chosen before pyplot loads
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [e["epoch"] for e in epochs]
    fig, axes = plt.subplots(4, 1, figsize=(10, 14), sharex=True)
    ax = axes[0]
    ax.plot(x, [e["train_loss"] for e in epochs], color="tab:blue", label="train loss")
    ax.plot(x, [e["val_loss"] for e in epochs], color="tab:red", label="val loss")
    ax.set_ylabel("loss (Dice + CE)")
    ax2 = ax.twinx()
    ax2.plot(x, [e["train_pseudo_dice"] for e in epochs], color="tab:cyan", ls=":", label="train pseudo Dice")
    ax2.plot(x, [e["val_pseudo_dice"] for e in epochs], color="tab:green", ls="--", label="val pseudo Dice")
    ax2.plot(x, [e["ema_pseudo_dice"] for e in epochs], color="tab:green", label="val pseudo Dice (EMA)")
    ax2.set_ylabel("pseudo Dice")
    ax2.set_ylim(0, 1)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="center right", fontsize=8)
    _plot_start_signals(axes[1], epochs)
    for a in axes[:2]:
        for e in epochs:
            if e.get("not_started"):
                a.axvspan(e["epoch"] - 0.5, e["epoch"] + 0.5, color="tab:red", alpha=0.15, lw=0)
    axes[2].plot(x, [e["epoch_seconds"] for e in epochs], color="tab:purple")
    axes[2].set_ylabel("epoch time [s]")
    axes[3].plot(x, [e["lr"] for e in epochs], color="tab:orange")
    axes[3].set_ylabel("learning rate")
    axes[3].set_xlabel("epoch")
    fig.tight_layout()
    save_figure(fig, out_png, dpi=80)
