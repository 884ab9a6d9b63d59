"""Scratch folders, synthetic tasks and environments shared by the rows of one run.

Both frameworks read the *same* raw task: the generator writes nnU-Net v2's raw layout
(`Dataset201_BenchPP/imagesTr/CASE_0000.nii.gz`), which nnU-Net requires and which our
loader reads as shipped. Each side gets its own preprocessed/results folders.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import Profile, RowSkipped, have_module
from benchmarks.procs import run_measured, tail

PP_TASK_ID = 201
PP_TASK_NAME = "BenchPP"
SEARCH_TASK_ID = 202
SEARCH_TASK_NAME = "BenchSearch"


def python_cmd(module: str, *args: str) -> list[str]:
    """Run one of our CLI modules with this interpreter (works in a venv without console scripts)."""
    return [sys.executable, "-m", module, *args]


def nnunet_cmd(name: str) -> list[str]:
    """An nnU-Net console script next to this interpreter, else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return [str(beside)]
    found = shutil.which(name)
    if not found:
        raise RowSkipped(f"{name} not found next to {sys.executable} or on PATH (nnunetv2 not installed)")
    return [found]


@dataclass
class Workspace:
    root: Path
    profile: Profile
    _prepared: dict[str, Any] = field(default_factory=dict)

    def sub(self, *parts: str) -> Path:
        p = self.root.joinpath(*parts)
        p.mkdir(parents=True, exist_ok=True)
        return p

    # --- tasks -----------------------------------------------------------------
    def pp_task(self) -> Path:
        """The row-1 task (nnU-Net v2 layout, CT-like, anisotropic), made once."""
        from c2fnas_auto.data.synthetic import make_synthetic_task

        p = self.profile
        return make_synthetic_task(self.sub("raw"), task_id=PP_TASK_ID, name=PP_TASK_NAME, num_train=p.pp_cases,
                                   num_test=0, shape=p.pp_shape, spacing=p.pp_spacing, seed=0, layout="nnunet",
                                   progress=False)

    def search_task(self) -> Path:
        from c2fnas_auto.data.synthetic import make_synthetic_task

        p = self.profile
        return make_synthetic_task(self.sub("raw"), task_id=SEARCH_TASK_ID, name=SEARCH_TASK_NAME,
                                   num_train=p.search_cases, num_test=0, shape=p.search_shape,
                                   spacing=(3.0, 1.0, 1.0), seed=1, layout="msd", progress=False)

    # --- environments ------------------------------------------------------------
    def ours_env(self, preprocessed: Path, results: Path | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env.update(C2FNAS_raw=str(self.sub("raw")), C2FNAS_preprocessed=str(preprocessed),
                   C2FNAS_results=str(results or self.sub("results_ours")))
        return env

    def nnunet_env(self, preprocessed: Path, results: Path | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env.update(nnUNet_raw=str(self.sub("raw")), nnUNet_preprocessed=str(preprocessed),
                   nnUNet_results=str(results or self.sub("results_nnunet")))
        return env

    def set_ours_env(self, preprocessed: Path, results: Path | None = None) -> None:
        """Point this process's C2FNAS_* variables at the workspace (for in-process calls)."""
        for k, v in self.ours_env(preprocessed, results).items():
            if k.startswith("C2FNAS_"):
                os.environ[k] = v

    # --- prepared (untimed) data for rows 3 and 4 ----------------------------------
    def ours_prepared(self, base_channels: int = 32, gpu_memory_gb: float = 8.0):
        """Our plans + preprocessed row-1 task (in process, once). Returns (plans, preprocessed_dir)."""
        key = f"ours-{base_channels}-{gpu_memory_gb}"
        if key not in self._prepared:
            from c2fnas_auto.planning.pipeline import plan_and_preprocess

            task = self.pp_task()
            pre = self.sub(f"prepared_ours_{base_channels}")
            self.set_ours_env(pre)
            plans = plan_and_preprocess(task.name, gpu_memory_gb=gpu_memory_gb, base_channels=base_channels,
                                        num_workers=self.profile.pp_workers)
            self._prepared[key] = (plans, pre / task.name)
        return self._prepared[key]

    def nnunet_prepared(self) -> Path:
        """nnU-Net v2 plans + 3d_fullres preprocessed row-1 task (once). Returns its preprocessed folder."""
        if "nnunet" not in self._prepared:
            if not have_module("nnunetv2"):
                raise RowSkipped("nnunetv2 not installed (`pip install -e .[bench]`)")
            task = self.pp_task()
            pre = self.sub("prepared_nnunet")
            done = pre / task.name / "nnUNetPlans_3d_fullres"
            if done.is_dir() and len(list(done.glob("*.pkl"))) == self.profile.pp_cases:
                self._prepared["nnunet"] = pre / task.name  # kept from an earlier run with the same --workdir
                return self._prepared["nnunet"]
            n = str(self.profile.pp_workers)
            res = run_measured(nnunet_cmd("nnUNetv2_plan_and_preprocess") +
                               ["-d", str(PP_TASK_ID), "-c", "3d_fullres", "-np", n, "-npfp", n],
                               self.root / "logs" / "nnunet_prepare.log", env=self.nnunet_env(pre))
            if res.returncode != 0:
                raise RuntimeError(f"nnUNetv2_plan_and_preprocess failed: {tail(res.log)}")
            self._prepared["nnunet"] = pre / task.name
        return self._prepared["nnunet"]
