"""Device choice shared by training, search and prediction."""

from __future__ import annotations

import torch

from c2fnas_auto.errors import C2FNASError


def resolve_device(name: str | None) -> torch.device:
    """'cuda' / 'cpu' / None (cuda when available). Asking for cuda without one is a user error."""
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise C2FNASError("--device cuda was requested but no CUDA device is available (use --device cpu)")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise C2FNASError(f"unknown device '{name}' (use cuda or cpu)")
    return torch.device(name)
