"""The two tools' sides: preprocess once, train a schedule, predict the test set.

Every step runs the tool's own command line in a subprocess (what a user runs), measured by
`benchmarks.procs.run_measured` (wall time, peak memory of the process tree) plus the CPU time
of the tree. An `Arm` is one way to run a tool (nnU-Net; ours; ours with bf16 on the CPU).
"""

from __future__ import annotations

import math
import os
import re
import resource
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.h2h.tasks import TaskSpec, write_splits
from benchmarks.procs import run_measured, tail
from benchmarks.workspace import nnunet_cmd, python_cmd
from c2fnas_auto.errors import C2FNASError
from c2fnas_auto.utils.io import load_json

NNUNET_PLANS = "nnUNetPlans_h2h"
NNUNET_DEFAULT_GB = 8.0  # nnU-Net v2's planner default (its -gpu_memory_target help)
OURS_DEFAULT_GB = 8.0    # c2fnas_plan_and_preprocess --gpu-memory-gb default


class StepFailed(C2FNASError):
    """A tool's command exited non-zero; the message names its log."""


@dataclass
class Settings:
    """What both tools share in one run of the benchmark."""

    workdir: Path
    gpu_memory_gb: float = 0.5
    threads: int = 2
    final_validation: bool = False  # the trainers' sliding-window validation of fold 0 after training
    mirroring: bool = True          # test-time mirroring when predicting the test set (both tools' default)
    ours_base_channels: int | None = None  # our planner's --base-channels; None: its default

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update({"OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads),
                    "nnUNet_raw": str(self.workdir / "raw"), "C2FNAS_raw": str(self.workdir / "raw"),
                    "nnUNet_preprocessed": str(self.workdir / "nnunet_preprocessed"),
                    "C2FNAS_preprocessed": str(self.workdir / "ours_preprocessed"),
                    "nnUNet_results": str(self.workdir / "results"), "C2FNAS_results": str(self.workdir / "results")})
        env.update(extra)
        return env


@dataclass
class Measured:
    wall_s: float
    cpu_s: float
    peak_tree_bytes: int | None
    peak_single_bytes: int | None

    def to_dict(self) -> dict[str, Any]:
        return {"wall_s": self.wall_s, "cpu_s": self.cpu_s, "peak_tree_pss_bytes": self.peak_tree_bytes,
                "peak_single_rss_bytes": self.peak_single_bytes}


def measured(cmd: list[str], log: Path, env: dict[str, str]) -> Measured:
    """Run one tool command; raise `StepFailed` naming the log when it fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    res = run_measured(cmd, log, env=env, interval=1.0)  # runs are minutes long: sample /proc once a second
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if res.returncode != 0:
        raise StepFailed(f"{log}: {Path(cmd[0]).name} {' '.join(cmd[1:3])} failed with exit code "
                         f"{res.returncode}: {tail(log, 1)}")
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return Measured(res.seconds, cpu, res.peak_tree_rss_bytes, res.max_rss_bytes)


@dataclass(frozen=True)
class Schedule:
    """Epochs x iterations per epoch; validation iterations are a fifth (nnU-Net's 250:50)."""

    epochs: int
    iters: int

    @property
    def total(self) -> int:
        return self.epochs * self.iters

    @property
    def val_iters(self) -> int:
        return max(1, self.iters // 5)

    @classmethod
    def for_iterations(cls, n: int, per_epoch: int = 250, min_epochs: int = 10) -> "Schedule":
        """About `n` iterations in epochs of at most `per_epoch` (nnU-Net's default length) and
        at least `min_epochs` of them: both trainers step their poly learning rate once per
        epoch, so a short budget in one epoch would train at the initial rate throughout (and
        log one validation point); ten epochs let the rate decay as it does over a full run."""
        n = max(1, int(n))
        epochs = max(min(min_epochs, n), math.ceil(n / per_epoch))
        return cls(epochs, max(1, round(n / epochs)))


@dataclass
class Arm:
    """One way to run one tool. `tool` is 'nnunet' or 'ours'; `execution` are ExecutionOptions
    fields for our training and prediction (so the bench can ask whether this CPU runs them
    fast), `train_extra` CLI options for training only (an A/B of a training setting)."""

    name: str
    tool: str
    execution: dict[str, str] = field(default_factory=dict)
    train_extra: tuple[str, ...] = field(default_factory=tuple)

    @property
    def extra(self) -> tuple[str, ...]:
        """`execution` as our CLI options, e.g. {'precision': 'bf16'} -> ('--precision', 'bf16')."""
        return tuple(part for key, value in self.execution.items()
                     for part in (f"--{key.replace('_', '-')}", value))

    # --- preprocessing (once per task and tool) --------------------------------------------
    def prepare(self, spec: TaskSpec, s: Settings) -> dict[str, Any]:
        """Plan and preprocess with the tool's own command at the shared memory target (cached)."""
        return (_prepare_nnunet if self.tool == "nnunet" else _prepare_ours)(spec, s)

    # --- training ----------------------------------------------------------------------------
    def train(self, spec: TaskSpec, s: Settings, sched: Schedule, seed: int, out: Path) -> Measured:
        env = s.env(nnUNet_results=str(out / "results"), C2FNAS_results=str(out / "results"))
        if self.tool == "nnunet":
            cmd = python_cmd("benchmarks.h2h.nnunet_train", str(spec.task_id), "--plans", NNUNET_PLANS,
                             "--epochs", str(sched.epochs), "--iters", str(sched.iters), "--seed", str(seed),
                             "--threads", str(s.threads), *([] if s.final_validation else ["--no-final-validation"]))
        else:
            cmd = python_cmd("c2fnas_auto.cli.train", str(spec.task_id), "0", "--epochs", str(sched.epochs),
                             "--iters-per-epoch", str(sched.iters), "--val-iters", str(sched.val_iters),
                             "--seed", str(seed), "--no-progress", "--device", "cpu", *self.extra, *self.train_extra,
                             *([] if s.final_validation else ["--no-final-validation"]))
        return measured(cmd, out / "logs" / "train.log", env)

    def predict(self, spec: TaskSpec, s: Settings, out: Path) -> Measured:
        """Predict the held-out test images with the tool's defaults (test-time mirroring on).
        Cases already in pred/ are skipped (both tools' continue option), so a prediction cut
        off part-way resumes; `cells.predict_resumably` first removes the one file a cut could
        have left half-written."""
        env = s.env(nnUNet_results=str(out / "results"), C2FNAS_results=str(out / "results"))
        pred = out / "pred"
        if self.tool == "nnunet":
            cmd = nnunet_cmd("nnUNetv2_predict") + ["-i", str(spec.test_images), "-o", str(pred), "-d",
                                                    str(spec.task_id), "-c", "3d_fullres", "-f", "0", "-p",
                                                    NNUNET_PLANS, "-tr", "nnUNetTrainer", "-device", "cpu",
                                                    "-npp", str(s.threads), "-nps", str(s.threads),
                                                    "--disable_progress_bar", "--continue_prediction",
                                                    *([] if s.mirroring else ["--disable_tta"])]
        else:
            cmd = python_cmd("c2fnas_auto.cli.predict", "-i", str(spec.test_images), "-o", str(pred), "-t",
                             str(spec.task_id), "-f", "0", "--device", "cpu", "--continue", *self.extra,
                             *([] if s.mirroring else ["--disable-tta"]))
        return measured(cmd, out / "logs" / "predict.log", env)

    def postprocess(self, spec: TaskSpec, s: Settings, out: Path) -> dict[str, Any]:
        """nnU-Net: what `nnUNetv2_find_best_configuration` picks on fold 0, applied to the test
        predictions by `nnUNetv2_apply_postprocessing` (into pred_pp/). Ours: nothing to do
        (our predictor applies a postprocessing.json only when one was found beforehand)."""
        if not s.final_validation:
            return {"applied": False, "note": "no final validation, so no postprocessing to select (both tools)"}
        if self.tool != "nnunet":
            return {"applied": False, "note": "not run for our side"}
        env = s.env(nnUNet_results=str(out / "results"))
        measured(nnunet_cmd("nnUNetv2_find_best_configuration") +
                 [str(spec.task_id), "-c", "3d_fullres", "-f", "0", "-p", NNUNET_PLANS, "-tr", "nnUNetTrainer",
                  "-np", str(s.threads), "--disable_ensembling"], out / "logs" / "find_best.log", env)
        pkl = next(iter(sorted((out / "results").rglob("postprocessing.pkl"))), None)
        plans = next(iter(sorted((out / "results").rglob("crossval_results_folds_0/plans.json"))), None)
        if pkl is None or plans is None:
            return {"applied": False, "note": "find_best_configuration wrote no postprocessing.pkl"}
        measured(nnunet_cmd("nnUNetv2_apply_postprocessing") +
                 ["-i", str(out / "pred"), "-o", str(out / "pred_pp"), "-pp_pkl_file", str(pkl), "-np",
                  str(s.threads), "-plans_json", str(plans)], out / "logs" / "apply_pp.log", env)
        return {"applied": True, "note": f"from {pkl.name} (nnUNetv2_find_best_configuration, fold 0)"}

    # --- what the trainer logged ---------------------------------------------------------------
    def curve(self, out: Path) -> list[list[float]]:
        """[[seconds since training start, validation pseudo Dice (mean over classes)], ...] per epoch."""
        if self.tool == "nnunet":
            logs = sorted((out / "results").rglob("fold_0/training_log_*.txt"))
            return parse_nnunet_log(logs[-1].read_text()) if logs else []
        found = sorted((out / "results").rglob("fold_0/metrics.json"))
        if not found:
            return []
        t, points = 0.0, []
        for e in load_json(found[-1], "training metrics")["epochs"]:
            t += float(e["epoch_seconds"])
            points.append([t, float(e["val_pseudo_dice"])])
        return points

    def epoch_seconds(self, out: Path) -> list[float]:
        """Each epoch's time as the trainer measured it (train + validation iterations)."""
        pts = self.curve(out)
        return [b[0] - a[0] for a, b in zip([[0.0, 0.0]] + pts[:-1], pts)]


_EPOCH_TIME = re.compile(r"Epoch time: ([0-9.]+) s")
_PSEUDO = re.compile(r"Pseudo dice \[([^\]]*)\]")
# decimals only, so 'np.float32(0.81)' (newer numpy's repr) gives 0.81 and not the 32
_NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d+\.\d*|\.\d+)(?:[eE][-+]?\d+)?|nan")


def parse_nnunet_log(text: str) -> list[list[float]]:
    """nnU-Net's training_log: the cumulative epoch time and the mean of each epoch's pseudo Dice."""
    dices = [[float(v) for v in _NUMBER.findall(m.group(1))] for m in _PSEUDO.finditer(text)]
    times = [float(m.group(1)) for m in _EPOCH_TIME.finditer(text)]
    t, out = 0.0, []
    for secs, d in zip(times, dices):
        t += secs
        out.append([t, sum(d) / len(d) if d else float("nan")])
    return out


def _patch_batch_nnunet(plans_file: Path) -> dict[str, Any]:
    conf = load_json(plans_file, "nnU-Net plans")["configurations"]["3d_fullres"]
    return {"patch_size": conf["patch_size"], "batch_size": conf["batch_size"]}


def _patch_batch_ours(plans_file: Path) -> dict[str, Any]:
    plans = load_json(plans_file, "our plans")
    return {"patch_size": plans["patch_size"], "batch_size": plans["batch_size"]}


def _prepare_nnunet(spec: TaskSpec, s: Settings) -> dict[str, Any]:
    pre = s.workdir / "nnunet_preprocessed" / spec.name
    done = pre / f"{NNUNET_PLANS}_3d_fullres"
    log_dir = s.workdir / "logs" / spec.key
    info: dict[str, Any] = {}
    if not (pre / f"{NNUNET_PLANS}.json").is_file() or len(list(done.glob("*.b2nd")) + list(done.glob("*.npz"))) \
            < len(spec.train_ids):
        n = str(s.threads)
        info["preprocess"] = measured(nnunet_cmd("nnUNetv2_plan_and_preprocess") +
                                      ["-d", str(spec.task_id), "-c", "3d_fullres", "-np", n, "-npfp", n,
                                       "-gpu_memory_target", str(s.gpu_memory_gb), "-overwrite_plans_name",
                                       NNUNET_PLANS], log_dir / "nnunet_plan_and_preprocess.log", s.env()).to_dict()
    if not (pre / "nnUNetPlans.json").is_file():  # its own default target, planned only (recorded, not used)
        measured(nnunet_cmd("nnUNetv2_plan_experiment") + ["-d", str(spec.task_id)],
                 log_dir / "nnunet_plan_default.log", s.env())
    write_splits(spec, pre)
    info["plan"] = {"gpu_memory_gb": s.gpu_memory_gb, **_patch_batch_nnunet(pre / f"{NNUNET_PLANS}.json")}
    info["default_plan"] = {"gpu_memory_gb": NNUNET_DEFAULT_GB, **_patch_batch_nnunet(pre / "nnUNetPlans.json")}
    return info


def _ours_plans(pre_root: Path, spec: TaskSpec) -> Path | None:
    found = sorted((pre_root / spec.name).glob("*lans*.json"))
    return found[0] if found else None


def _prepare_ours(spec: TaskSpec, s: Settings) -> dict[str, Any]:
    pre_root = s.workdir / "ours_preprocessed"
    log_dir = s.workdir / "logs" / spec.key
    # Always run: our preprocessing redoes only the cases whose raw files or settings changed (a
    # re-copied raw folder gets new mtimes, and the trainer then refuses the old arrays), and
    # costs a few seconds of checks when nothing did.
    info: dict[str, Any] = {
        "preprocess": measured(python_cmd("c2fnas_auto.cli.plan_and_preprocess", "-t", str(spec.task_id),
                                          "-np", str(s.threads), "--gpu-memory-gb", str(s.gpu_memory_gb),
                                          *([] if s.ours_base_channels is None
                                            else ["--base-channels", str(s.ours_base_channels)]),
                                          "--no-progress"),
                               log_dir / "ours_plan_and_preprocess.log", s.env()).to_dict()}
    default_root = s.workdir / "ours_default_plans"
    if _ours_plans(default_root, spec) is None:  # its own default target, planned only (recorded, not used)
        measured(python_cmd("c2fnas_auto.cli.plan_and_preprocess", "-t", str(spec.task_id), "--no-preprocess",
                            "--no-progress"), log_dir / "ours_plan_default.log",
                 s.env(C2FNAS_preprocessed=str(default_root)))
    write_splits(spec, pre_root / spec.name)
    plans = _ours_plans(pre_root, spec)
    default = _ours_plans(default_root, spec)
    if plans is None or default is None:
        raise StepFailed(f"{pre_root / spec.name}: our planner wrote no plans file")
    info["plan"] = {"gpu_memory_gb": s.gpu_memory_gb, **_patch_batch_ours(plans)}
    if s.ours_base_channels is not None:
        info["plan"]["base_channels"] = s.ours_base_channels
    info["default_plan"] = {"gpu_memory_gb": OURS_DEFAULT_GB, **_patch_batch_ours(default)}
    return info


ARMS = {"nnunet": Arm("nnunet", "nnunet"), "ours": Arm("ours", "ours"),
        "ours_bf16": Arm("ours_bf16", "ours", {"precision": "bf16"}),
        # A/B of a default: nnU-Net trains with deep supervision, our plans leave it off
        "ours_ds": Arm("ours_ds", "ours", train_extra=("--deep-supervision", "on"))}
