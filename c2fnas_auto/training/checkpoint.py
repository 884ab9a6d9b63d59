"""Checkpoint files: everything needed to resume or to predict with a trained fold."""

from __future__ import annotations

from pathlib import Path

import torch

from c2fnas_auto.errors import InputError
from c2fnas_auto.utils.io import atomic_torch_save

LATEST, BEST, FINAL = "checkpoint_latest.pth", "checkpoint_best.pth", "checkpoint_final.pth"


def save_checkpoint(path: Path, *, network_state: dict, optimizer_state: dict, scaler_state: dict, epoch: int,
                    log_state: dict, plans: dict, genotype: dict, network_config: dict, extra: dict | None = None
                    ) -> None:
    """Atomic save; `epoch` is the number of finished epochs (the epoch to resume at)."""
    atomic_torch_save({"network_weights": network_state, "optimizer_state": optimizer_state,
                       "grad_scaler_state": scaler_state, "epoch": int(epoch), "logging": log_state,
                       "plans": plans, "genotype": genotype, "network_config": network_config,
                       **(extra or {})}, path)


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    """Read a checkpoint; an unreadable file names itself in the error."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # truncated or foreign files: one line for the user
        raise InputError(f"{path}: cannot read checkpoint ({type(exc).__name__}: {exc})") from None
