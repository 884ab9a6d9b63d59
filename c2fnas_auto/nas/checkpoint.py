"""Checkpoint files: everything needed to resume or to predict with a trained fold.

The format lives here, below both training (which writes and resumes) and inference (which
predicts), so neither imports the other for it. A checkpoint records the network's identity
(genotype and network config) next to its weights, and `trained_network` rebuilds exactly
that network, so a fold can never be loaded into, or ensembled as, another architecture.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from c2fnas_auto.errors import C2FNASError, InputError
from c2fnas_auto.utils.io import atomic_torch_save

LATEST, BEST, FINAL = "checkpoint_latest.pth", "checkpoint_best.pth", "checkpoint_final.pth"
CHECKPOINTS = ("final", "best", "latest")  # the names `checkpoint_<name>.pth` a user may choose
REQUIRED_KEYS = ("network_weights", "plans", "genotype", "network_config")


def checkpoint_file_name(checkpoint: str) -> str:
    """'final' -> 'checkpoint_final.pth' (one of CHECKPOINTS)."""
    if checkpoint not in CHECKPOINTS:
        raise InputError(f"checkpoint '{checkpoint}' is not one of {', '.join(CHECKPOINTS)}")
    return f"checkpoint_{checkpoint}.pth"


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


@dataclass
class TrainedNetwork:
    """A network rebuilt from a checkpoint, with the identity it was trained under."""

    network: nn.Module
    genotype: Any  # nas.genotype.Genotype
    config: Any  # nas.config.NetworkConfig
    plans: dict  # the plans as trained (a dict: nas sits below planning)
    checkpoint_file: Path

    def identity(self) -> tuple:
        """What two folds must share to be averaged: genotype levels + ops and network config."""
        return (tuple(self.genotype.levels), tuple(self.genotype.ops), _frozen(self.config.to_dict()))


def _frozen(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((k, _frozen(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    return value


def trained_network(path: Path, map_location="cpu") -> TrainedNetwork:
    """Read a checkpoint and rebuild its network from the genotype and config it records."""
    from c2fnas_auto.nas.config import NetworkConfig
    from c2fnas_auto.nas.genotype import Genotype
    from c2fnas_auto.nas.network import build_network

    path = Path(path)
    ckpt = load_checkpoint(path, map_location)
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise InputError(f"{path}: checkpoint lacks {', '.join(missing)}")
    try:
        genotype = ckpt["genotype"]
        genotype = (Genotype.from_dict(genotype) if isinstance(genotype, dict) else genotype).validate()
        config = ckpt["network_config"]
        config = NetworkConfig.from_dict(config) if isinstance(config, dict) else config
    except C2FNASError as exc:  # the genotype / config errors do not know the file
        raise InputError(f"{path}: {exc}") from None
    network = build_network(genotype, config)
    try:
        network.load_state_dict(ckpt["network_weights"])
    except RuntimeError as exc:
        raise InputError(f"{path}: weights do not fit the stored network ({str(exc).splitlines()[0]})") from None
    plans = ckpt["plans"] if isinstance(ckpt["plans"], dict) else ckpt["plans"].to_dict()
    return TrainedNetwork(network, genotype, config, plans, path)
