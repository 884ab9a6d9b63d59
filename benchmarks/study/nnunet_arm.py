"""nnU-Net v2's own network as an arm of the study (the paper's claim is that the searched
network beats the hand-designed one).

nnU-Net's planner plans its network for the task at the same memory budget as ours
(`-gpu_memory_target`, the profile's `gpu_memory_gb`), with its target spacing set to ours
(`-overwrite_target_spacing`) so that its topology is planned for the voxels it will see:
every arm trains on the same preprocessed data. The arm keeps nnU-Net's architecture (a
PlainConvUNet, base width 32, its own init), patch size and batch size, and is trained by the
same `fit` and scored by the same `score_cases` at the same budget as every other arm.
What it does not get from nnU-Net: its trainer (deep supervision, its augmentation pipeline,
1000 epochs), which the protocol keeps the same for every arm.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from c2fnas_auto.errors import C2FNASError
from c2fnas_auto.utils.io import atomic_write_json, load_json

ARM_NAME = "nnunet"
CELL_STYLE = "nnunet"  # stands in the results' cell-style column
PLANS_NAME = "nnUNetPlansStudy"
CONFIGURATION = "3d_fullres"


@dataclass(frozen=True)
class NnunetPlan:
    patch_size: tuple[int, ...]
    batch_size: int
    architecture: dict[str, Any]
    spacing: tuple[float, ...]
    gpu_memory_gb: float

    def short_id(self) -> str:
        blob = json.dumps([self.architecture, list(self.patch_size), self.batch_size], sort_keys=True)
        return "nn" + hashlib.sha1(blob.encode()).hexdigest()[:6]

    def to_dict(self) -> dict[str, Any]:
        return {"patch_size": list(self.patch_size), "batch_size": self.batch_size, "architecture": self.architecture,
                "spacing": list(self.spacing), "gpu_memory_gb": self.gpu_memory_gb}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "NnunetPlan":
        return cls(tuple(int(x) for x in d["patch_size"]), int(d["batch_size"]), d["architecture"],
                   tuple(float(x) for x in d["spacing"]), float(d["gpu_memory_gb"]))


def _tool(name: str) -> list[str]:
    """`workspace.nnunet_cmd`, its 'row skipped' as the study's one-line error."""
    from benchmarks.common import RowSkipped
    from benchmarks.workspace import nnunet_cmd

    try:
        return nnunet_cmd(name)
    except RowSkipped as exc:
        raise C2FNASError(f"{exc}: the study's nnU-Net arm needs it (pip install nnunetv2 in a benchmark venv, "
                          "documentation/studies/search_study.md)") from None


def plan_nnunet(task_dir: Path, task_id: int, target_spacing: list[float], gpu_memory_gb: float,
                workdir: Path) -> NnunetPlan:
    """nnU-Net's 3d_fullres plan for the raw task (nnU-Net layout), kept in
    `<workdir>/study_plans/<task>_nnunet.json` so reruns do not plan again."""
    cache = workdir / "study_plans" / f"{task_dir.name}_nnunet.json"
    if cache.is_file():
        return NnunetPlan.from_dict(load_json(cache, "nnU-Net study plan"))
    env = dict(os.environ, nnUNet_raw=str(task_dir.parent), nnUNet_preprocessed=str(workdir / "nnunet_preprocessed"),
               nnUNet_results=str(workdir / "nnunet_results"))
    log = workdir / "logs" / f"{task_dir.name}_nnunet_plan.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as fh:
        for cmd in (_tool("nnUNetv2_extract_fingerprint") + ["-d", str(task_id), "-np", "1"],
                    _tool("nnUNetv2_plan_experiment") + ["-d", str(task_id), "-gpu_memory_target", str(gpu_memory_gb),
                                                         "-overwrite_target_spacing",
                                                         *[str(s) for s in target_spacing],
                                                         "-overwrite_plans_name", PLANS_NAME]):
            rc = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT).returncode
            if rc != 0:
                raise C2FNASError(f"{log}: {Path(cmd[0]).name} failed with exit code {rc}")
    plans_file = workdir / "nnunet_preprocessed" / task_dir.name / f"{PLANS_NAME}.json"
    conf = load_json(plans_file, "nnU-Net plans")["configurations"][CONFIGURATION]
    plan = NnunetPlan(tuple(int(x) for x in conf["patch_size"]), int(conf["batch_size"]), conf["architecture"],
                      tuple(float(x) for x in conf["spacing"]), gpu_memory_gb)
    cache.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(cache, plan.to_dict())
    return plan


def scaled_architecture(architecture: dict[str, Any], width_multiplier: float | None) -> dict[str, Any]:
    """nnU-Net's architecture entry with every stage's width scaled (rounded, at least 1)."""
    if width_multiplier is None:
        return architecture
    out = copy.deepcopy(architecture)
    kw = out["arch_kwargs"]
    kw["features_per_stage"] = [max(1, round(f * width_multiplier)) for f in kw["features_per_stage"]]
    return out


def architecture_price(architecture: dict[str, Any], num_input_channels: int, num_classes: int,
                       patch_size, width_multiplier: float | None = None) -> tuple[int, int]:
    """(parameters, forward FLOPs) of nnU-Net's planned network at `patch_size`, from its arch_kwargs."""
    from c2fnas_auto.planning.budgets import plain_unet_cost

    kw = scaled_architecture(architecture, width_multiplier)["arch_kwargs"]
    return plain_unet_cost(num_input_channels, num_classes, list(patch_size), kw["features_per_stage"],
                           kw["kernel_sizes"], kw["strides"], kw["n_conv_per_stage"], kw["n_conv_per_stage_decoder"])


def build_nnunet_network(plan: NnunetPlan, num_input_channels: int, num_classes: int,
                         width_multiplier: float | None = None):
    from benchmarks.peers import network_from_architecture

    return network_from_architecture(scaled_architecture(plan.architecture, width_multiplier), num_input_channels,
                                     num_classes, deep_supervision=False)


def plans_for(plans, plan: NnunetPlan):
    """Our plans with nnU-Net's patch and batch (for `score_cases`' sliding window); a copy, not
    re-validated: the divisibility rules it would check are our network's, not nnU-Net's."""
    out = copy.copy(plans)
    out.patch_size = list(plan.patch_size)
    out.batch_size = plan.batch_size
    return out
