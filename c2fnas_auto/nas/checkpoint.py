"""Checkpoint files: everything needed to resume or to predict with a trained fold.

The format lives here, below both training (which writes and resumes) and inference (which
predicts), so neither imports the other for it. A checkpoint records the network's identity
(genotype and network config) next to its weights, and `trained_network` rebuilds exactly
that network, so a fold can never be loaded into, or ensembled as, another architecture.

A checkpoint holds tensors and plain data only, with a `format_version`, and is read with
`weights_only=True` (utils/torch_files.py): a checkpoint from someone else cannot run code.
Its network config is checked against its own tensor shapes on the meta device before
anything is allocated, so a config that claims 8192 channels fails with one line instead
of a multi-GB allocation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from c2fnas_auto.errors import C2FNASError, InputError
from c2fnas_auto.nas.config import NetworkConfig
from c2fnas_auto.nas.genotype import Genotype
from c2fnas_auto.utils.torch_files import load_torch_file, save_plain

LATEST, BEST, FINAL = "checkpoint_latest.pth", "checkpoint_best.pth", "checkpoint_final.pth"
CHECKPOINTS = ("final", "best", "latest")  # the names `checkpoint_<name>.pth` a user may choose
REQUIRED_KEYS = ("network_weights", "plans", "genotype", "network_config")
# 2: tensors and plain data only (no pickled objects), readable with torch.load(weights_only=True)
FORMAT_VERSION = 2


def checkpoint_file_name(checkpoint: str) -> str:
    """'final' -> 'checkpoint_final.pth' (one of CHECKPOINTS)."""
    if checkpoint not in CHECKPOINTS:
        raise InputError(f"checkpoint '{checkpoint}' is not one of {', '.join(CHECKPOINTS)}")
    return f"checkpoint_{checkpoint}.pth"


def save_checkpoint(path: Path, *, network_state: dict, optimizer_state: dict, scaler_state: dict, epoch: int,
                    log_state: dict, plans: dict, genotype: dict, network_config: dict, extra: dict | None = None
                    ) -> None:
    """Atomic save; `epoch` is the number of finished epochs (the epoch to resume at)."""
    save_plain({"format_version": FORMAT_VERSION, "network_weights": network_state,
                "optimizer_state": optimizer_state, "grad_scaler_state": scaler_state, "epoch": int(epoch),
                "logging": log_state, "plans": plans, "genotype": genotype, "network_config": network_config,
                **(extra or {})}, path)


def save_checkpoint_dict(ckpt: dict, path: Path) -> None:
    """Write an already assembled checkpoint (e.g. an export's reduced copy) in the current format."""
    save_plain({**ckpt, "format_version": FORMAT_VERSION}, path)


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    """Read a checkpoint as tensors and plain data; unreadable, pickled or newer files name themselves."""
    path = Path(path)
    ckpt = load_torch_file(path, "checkpoint", map_location)
    if not isinstance(ckpt, dict):
        raise InputError(f"{path}: not a c2fnas-auto checkpoint (holds a {type(ckpt).__name__}, not a dict)")
    version = ckpt.get("format_version", 1)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise InputError(f"{path}: checkpoint format_version {version!r} is newer than this c2fnas-auto "
                         f"reads ({FORMAT_VERSION}); update c2fnas-auto")
    return ckpt


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
    # start-up: nas.network loads torch._dynamo (seconds); the --help of c2fnas_train imports this module
    from c2fnas_auto.nas.network import build_network

    path = Path(path)
    ckpt = load_checkpoint(path, map_location)
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise InputError(f"{path}: checkpoint lacks {', '.join(missing)}")
    genotype, config = ckpt["genotype"], ckpt["network_config"]
    if not isinstance(genotype, (dict, Genotype)) or not isinstance(config, (dict, NetworkConfig)):
        raise InputError(f"{path}: genotype and network_config must be objects (got {type(genotype).__name__}, "
                         f"{type(config).__name__})")
    try:
        genotype = (Genotype.from_dict(genotype) if isinstance(genotype, dict) else genotype).validate()
        config = NetworkConfig.from_dict(config) if isinstance(config, dict) else config
    except C2FNASError as exc:  # the genotype / config errors do not know the file
        raise InputError(f"{path}: {exc}") from None
    except (AttributeError, KeyError, TypeError, ValueError) as exc:  # malformed plain data from a file
        raise InputError(f"{path}: malformed genotype or network_config ({type(exc).__name__}: {exc})") from None
    weights = ckpt["network_weights"]
    check_weights_fit_config(path, weights, lambda: build_network(genotype, config))
    network = build_network(genotype, config)
    try:
        network.load_state_dict(weights)
    except RuntimeError as exc:
        raise InputError(f"{path}: weights do not fit the stored network ({str(exc).splitlines()[0]})") from None
    plans = ckpt["plans"].to_dict() if hasattr(ckpt["plans"], "to_dict") else ckpt["plans"]
    if not isinstance(plans, dict):
        raise InputError(f"{path}: plans must be an object (got {type(plans).__name__})")
    return TrainedNetwork(network, genotype, config, plans, path)


def check_weights_fit_config(path: Path, weights: Any, build: Any) -> None:
    """The network `build()` makes (on the meta device: no memory) has exactly the tensors in
    `weights`, name for name and shape for shape; else InputError naming the first difference.

    Sizes in a checkpoint's config are thus bounded by its own tensors, which a model zip's
    byte budget bounds in turn."""
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise InputError(f"{path}: network_weights is not a mapping of names to tensors")
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in build().state_dict().items()}
    stored = {k: tuple(v.shape) for k, v in weights.items()}
    missing, extra = sorted(set(expected) - set(stored)), sorted(set(stored) - set(expected))
    if missing or extra:
        raise InputError(f"{path}: weights do not fit the stored network (genotype and network_config build "
                         f"other tensors: missing {missing[:2]}, unexpected {extra[:2]})")
    for key, shape in expected.items():
        if stored[key] != shape:
            raise InputError(f"{path}: weights do not fit the stored network: '{key}' is {list(stored[key])}, "
                             f"its network_config builds {list(shape)} (checked before allocating)")
