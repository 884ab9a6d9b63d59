"""nnU-Net v2 side helpers: its plans, its default network, its environment, in process.

nnU-Net reads nnUNet_raw / nnUNet_preprocessed / nnUNet_results from the environment
when it needs them, so setting them in this process before a call is enough.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from c2fnas_auto.utils.io import load_json

CONFIGURATION = "3d_fullres"


def set_nnunet_env(env: dict[str, str]) -> None:
    for k, v in env.items():
        if k.startswith("nnUNet_"):
            os.environ[k] = v


def nnunet_plans(preprocessed_task: Path) -> dict[str, Any]:
    return load_json(preprocessed_task / "nnUNetPlans.json", "nnU-Net plans")


def nnunet_network(preprocessed_task: Path, num_input_channels: int, num_outputs: int,
                   deep_supervision: bool = False):
    """nnU-Net's default 3d_fullres network (a PlainConvUNet for these plans), built the way
    its trainer builds it, from its own plans file."""
    arch = nnunet_plans(preprocessed_task)["configurations"][CONFIGURATION]["architecture"]
    return network_from_architecture(arch, num_input_channels, num_outputs, deep_supervision)


def network_from_architecture(arch: dict[str, Any], num_input_channels: int, num_outputs: int,
                              deep_supervision: bool = False):
    """nnU-Net's network from the `architecture` entry of one of its plans' configurations,
    with nnU-Net's own weight init (`allow_init`)."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    return get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
                                  num_input_channels, num_outputs, allow_init=True,
                                  deep_supervision=deep_supervision)


def nnunet_configuration(preprocessed_task: Path) -> dict[str, Any]:
    return nnunet_plans(preprocessed_task)["configurations"][CONFIGURATION]


def nnunet_trainer(preprocessed_task: Path):
    """An nnUNetTrainer on the CPU for fold 0 (its constructor writes nothing heavy)."""
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    plans = nnunet_plans(preprocessed_task)
    plans["continue_training"] = False
    dataset_json = load_json(preprocessed_task / "dataset.json", "nnU-Net dataset.json")
    return nnUNetTrainer(plans, CONFIGURATION, 0, dataset_json, device=torch.device("cpu"))
