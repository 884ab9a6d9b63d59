"""Row 1: plan + preprocess, ours vs `nnUNetv2_plan_and_preprocess`, same raw cases.

Both commands run as subprocesses from a clean preprocessed folder each time (ours
skips finished cases on a rerun, which would be cheating), both check dataset
integrity (ours always does; nnU-Net gets --verify_dataset_integrity), both with the
same number of worker processes.

Two case sets (`CASE_SETS`): `small`, the issue's 20 cases of 64x96x96 at one spacing
(no resampling: it mostly measures start-up and I/O), and `ct`, 10 CT-like volumes of
200x512x512 whose spacings differ per case around 3x0.8x0.8 mm (synthetic generator,
`spacing_jitter`), so every case is resampled, some across thick slices separately.
`--quick` / `--tiny` use `small`, `--full` uses `ct`; the environment variable
`C2FNAS_BENCH_PP_CASES=small|ct` picks one for any profile.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import (Profile, RowResult, Summary, alternate, fmt_bytes, fmt_seconds, median,
                               paired_ratio, ratio, require_module)
from benchmarks.procs import run_measured, tail
from benchmarks.workspace import PP_TASK_ID, Workspace, nnunet_cmd, python_cmd

ROW = "preprocess"
TITLE = "1. Plan + preprocess"
CASES_ENV = "C2FNAS_BENCH_PP_CASES"
CT_TASK_ID, CT_TASK_NAME = 203, "BenchPPCT"


@dataclass(frozen=True)
class CaseSet:
    """The raw task row 1 runs on. `None` sizes mean: the profile's `pp_*` fields."""

    name: str
    cases: int | None = None
    shape: tuple[int, int, int] | None = None
    spacing: tuple[float, float, float] | None = None
    spacing_jitter: float = 0.0
    reps: int | None = None  # alternated pairs; None = the profile's
    keep_for_later_rows: bool = True  # rows 3 and 4 reuse the last output (the profile's task only)


CASE_SETS = {
    "small": CaseSet("small"),
    "ct": CaseSet("ct", cases=10, shape=(200, 512, 512), spacing=(3.0, 0.8, 0.8), spacing_jitter=0.25, reps=2,
                  keep_for_later_rows=False),
}
DEFAULT_SET = {"tiny": "small", "quick": "small", "full": "ct"}


def case_set(profile: Profile) -> CaseSet:
    """The case set for this run: the environment variable, else the profile's default."""
    name = os.environ.get(CASES_ENV, "").strip() or DEFAULT_SET.get(profile.name, "small")
    if name not in CASE_SETS:
        raise ValueError(f"{CASES_ENV}={name!r}: expected one of {', '.join(CASE_SETS)}")
    return CASE_SETS[name]


@dataclass(frozen=True)
class _Task:
    task_id: int
    folder: Path
    cases: int
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    jitter: float


def _task(ws: Workspace, cs: CaseSet) -> _Task:
    p = ws.profile
    if cs.cases is None:
        return _Task(PP_TASK_ID, ws.pp_task(), p.pp_cases, p.pp_shape, p.pp_spacing, 0.0)
    from c2fnas_auto.data.synthetic import make_synthetic_task

    folder = make_synthetic_task(ws.sub("raw"), task_id=CT_TASK_ID, name=CT_TASK_NAME, num_train=cs.cases,
                                 num_test=0, shape=cs.shape, spacing=cs.spacing, seed=0, layout="nnunet",
                                 spacing_jitter=cs.spacing_jitter, progress=True)
    return _Task(CT_TASK_ID, folder, cs.cases, cs.shape, cs.spacing, cs.spacing_jitter)


def _run_side(ws: Workspace, task: _Task, cs: CaseSet, side: str, rep: int, reps: int, figures: dict) -> float:
    p = ws.profile
    out = ws.root / f"pp_{side}_{rep}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    n = str(p.pp_workers)
    if side == "ours":
        cmd = python_cmd("c2fnas_auto.cli.plan_and_preprocess", "-t", str(task.task_id), "-np", n, "--no-progress")
        env = ws.ours_env(out, ws.sub("results_ours"))
    else:
        cmd = nnunet_cmd("nnUNetv2_plan_and_preprocess") + ["-d", str(task.task_id), "-c", "3d_fullres", "-np", n,
                                                            "-npfp", n, "--verify_dataset_integrity"]
        env = ws.nnunet_env(out)
    res = run_measured(cmd, ws.root / "logs" / f"pp_{cs.name}_{side}_{rep}.log", env=env)
    if res.returncode != 0:
        raise RuntimeError(f"{side} plan+preprocess exited {res.returncode}: {tail(res.log, 4)}")
    figures.setdefault(side, []).append({"seconds": res.seconds, "max_rss_bytes": res.max_rss_bytes,
                                         "peak_tree_rss_bytes": res.peak_tree_rss_bytes})
    figures.setdefault(f"{side}_command", " ".join(cmd))
    if rep == reps - 1 and cs.keep_for_later_rows:
        _keep_for_later_rows(ws, side, out)
    else:
        shutil.rmtree(out, ignore_errors=True)
    return res.seconds


def _keep_for_later_rows(ws: Workspace, side: str, out) -> None:
    """The last repetition's output is exactly what rows 3 and 4 need (our CLI defaults =
    `Workspace.ours_prepared(32, 8.0)`), so they need not preprocess the task again."""
    task = ws.pp_task().name
    if side == "ours":
        from c2fnas_auto.planning.plans import Plans

        ws._prepared["ours-32-8.0"] = (Plans.load(out / task / "plans.json"), out / task)
    else:
        ws._prepared["nnunet"] = out / task


def run(ws: Workspace, profile: Profile) -> RowResult:
    require_module("nnunetv2", "peer for plan + preprocess")
    cs = case_set(profile)
    task = _task(ws, cs)
    reps = cs.reps or profile.reps
    figures: dict = {}
    ours, peer = alternate(lambda i: _run_side(ws, task, cs, "ours", i, reps, figures),
                           lambda i: _run_side(ws, task, cs, "nnunet", i, reps, figures), reps)
    mem = {side: {k: median([r[k] for r in figures[side] if r[k] is not None])
                  for k in ("max_rss_bytes", "peak_tree_rss_bytes")} for side in ("ours", "nnunet")}
    t_ours, t_peer = median(ours), median(peer)
    r = paired_ratio(ours, peer)
    spacing = "x".join(map(str, task.spacing)) + " mm" + (
        f" (each axis x U(1-{task.jitter:g}, 1+{task.jitter:g}) per case: every case resampled)" if task.jitter else "")
    return RowResult(
        row=ROW, title=TITLE,
        note=(f"case set '{cs.name}': {task.cases} cases {'x'.join(map(str, task.shape))} voxels, spacing {spacing}"
              f", -np {profile.pp_workers}, {reps} alternated pairs; memory = peak summed PSS "
              f"of the process tree (ours {fmt_bytes(mem['ours']['peak_tree_rss_bytes'])}, nnU-Net "
              f"{fmt_bytes(mem['nnunet']['peak_tree_rss_bytes'])})"),
        summary=Summary(ours=f"{fmt_seconds(t_ours)}, {fmt_bytes(mem['ours']['peak_tree_rss_bytes'])}",
                        peer=f"nnU-Net v2 {fmt_seconds(t_peer)}, {fmt_bytes(mem['nnunet']['peak_tree_rss_bytes'])}",
                        ratio=r, goal="time <= 0.5x nnU-Net", met=None if r is None else r <= 0.5),
        details={"case_set": cs.name, "cases": task.cases, "shape": list(task.shape), "spacing": list(task.spacing),
                 "spacing_jitter": task.jitter, "seconds_ours": ours, "seconds_nnunet": peer,
                 "median_seconds_ours": t_ours, "median_seconds_nnunet": t_peer, "memory_median": mem,
                 "runs": figures,
                 "memory_ratio_tree": ratio(mem["ours"]["peak_tree_rss_bytes"], mem["nnunet"]["peak_tree_rss_bytes"])},
    )
