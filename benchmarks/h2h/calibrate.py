"""Turn a training budget in machine minutes into each arm's iteration count.

The machine may be shared while the benchmark runs, so a run's own wall-clock is not a fair
budget. Instead each arm is timed once per task in a short run of its real training command
(two epochs of `CALIB_ITERS` iterations): the trainers' own epoch times give the cost of one
iteration, `c` (training plus its fifth of validation), and the rest of the command's wall time
is the fixed cost `a` (start-up, the final validation of fold 0). A budget of B seconds then
buys N = (B - a) / c iterations. The load average is kept next to the figures, and
`--recalibrate` redoes it (in a quiet session, say).
"""

from __future__ import annotations

import os
import shutil
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.h2h.sides import Arm, Schedule, Settings
from benchmarks.h2h.tasks import TaskSpec
from c2fnas_auto.errors import C2FNASError
from c2fnas_auto.utils.io import atomic_write_json, load_json

CALIB_ITERS = 20
MIN_ITERS = 10


@dataclass
class Calibration:
    task: str
    arm: str
    seconds_per_iteration: float
    fixed_seconds: float
    wall_s: float
    cpu_s: float
    iterations: int
    epoch_seconds: list[float]
    loadavg_before: list[float]
    loadavg_after: list[float]
    threads: int
    date: str

    def schedule(self, budget_s: float) -> Schedule:
        """The schedule whose predicted wall time is the budget (at least MIN_ITERS iterations)."""
        n = (budget_s - self.fixed_seconds) / self.seconds_per_iteration
        return Schedule.for_iterations(max(MIN_ITERS, int(n)))


def fit(epoch_seconds: list[float], iters: int, wall_s: float) -> tuple[float, float]:
    """(seconds per iteration, fixed seconds) from the epochs' times of one short run.
    The first epoch carries warm-up (first allocations, loader start), so later epochs set the
    rate when there are any; everything outside the epochs is the fixed cost."""
    if not epoch_seconds or iters < 1:
        raise C2FNASError("calibration run logged no epoch times: cannot derive seconds per iteration")
    steady = epoch_seconds[1:] or epoch_seconds
    c = statistics.median(steady) / iters
    return c, max(0.0, wall_s - sum(epoch_seconds))


def calibrate(arm: Arm, spec: TaskSpec, s: Settings, results_dir: Path, iters: int = CALIB_ITERS,
              redo: bool = False) -> Calibration:
    """The arm's calibration for the task, measured once and kept in `results_dir/calibration/`."""
    path = results_dir / "calibration" / f"{spec.key}__{arm.name}.json"
    if path.is_file() and not redo:
        return Calibration(**load_json(path, "head-to-head calibration"))
    out = s.workdir / "calibration" / f"{spec.key}__{arm.name}"
    shutil.rmtree(out, ignore_errors=True)
    before = list(os.getloadavg())
    m = arm.train(spec, s, Schedule(2, iters), seed=0, out=out)
    epochs = arm.epoch_seconds(out)
    c, a = fit(epochs, iters, m.wall_s)
    cal = Calibration(task=spec.key, arm=arm.name, seconds_per_iteration=c, fixed_seconds=a, wall_s=m.wall_s,
                      cpu_s=m.cpu_s, iterations=2 * iters, epoch_seconds=epochs, loadavg_before=before,
                      loadavg_after=list(os.getloadavg()), threads=s.threads,
                      date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    atomic_write_json(path, asdict(cal))
    return cal
