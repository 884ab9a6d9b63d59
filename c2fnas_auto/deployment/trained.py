"""Where the trained experiments of a task are and how one fold's network is loaded.

The one place the deployment package touches the results layout and the inference
loader, so the exporters work on (network, plans, provenance) only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from c2fnas_auto.deployment.errors import DeploymentError
from c2fnas_auto.inference.experiments import available_folds, find_experiment
from c2fnas_auto.inference.predictor import load_fold


@dataclass
class TrainedFold:
    """One fold's network in eval mode on the CPU, with the plans it was trained with."""

    experiment_dir: Path
    fold: str
    checkpoint_file: Path
    network: torch.nn.Module
    plans: Any
    genotype: dict = field(default_factory=dict)

    def source(self) -> dict:
        return {"experiment": self.experiment_dir.name, "fold": self.fold, "checkpoint": self.checkpoint_file.name,
                "task": getattr(self.plans, "task_name", "")}


def experiment_folder(task: str | int | None, model_folder: str | None, plans_name: str,
                      experiment: str | None = None) -> Path:
    """`-m FOLDER` as given, else the task's experiment (`--experiment NAME`, default the plans genotype's)."""
    if model_folder is not None:
        folder = Path(model_folder)
        if not folder.is_dir():
            raise DeploymentError(f"{folder}: experiment folder not found")
        return folder
    return find_experiment(task, plans_name, experiment=experiment)


def load_trained_fold(experiment_dir: Path, fold: str | None, checkpoint: str) -> TrainedFold:
    """`fold` None: 'all' when trained, else the first trained fold."""
    folds = available_folds(experiment_dir, checkpoint)
    if not folds:
        raise DeploymentError(f"{experiment_dir}: no fold has checkpoint_{checkpoint}.pth")
    if fold is None:
        fold = "all" if "all" in folds else folds[0]
    model = load_fold(experiment_dir, str(fold), checkpoint, torch.device("cpu"))
    plans = model.plans
    genotype = plans.genotype.to_dict() if plans.genotype is not None else {}
    return TrainedFold(experiment_dir, str(fold), model.checkpoint_file, model.network.eval(), plans, genotype)
