"""Row 1: plan + preprocess, ours vs `nnUNetv2_plan_and_preprocess`, same raw cases.

Both commands run as subprocesses from a clean preprocessed folder each time (ours
skips finished cases on a rerun, which would be cheating), both check dataset
integrity (ours always does; nnU-Net gets --verify_dataset_integrity), both with the
same number of worker processes.
"""

from __future__ import annotations

import shutil

from benchmarks.common import (Profile, RowResult, Summary, alternate, fmt_bytes, fmt_seconds, median,
                               paired_ratio, ratio, require_module)
from benchmarks.procs import run_measured, tail
from benchmarks.workspace import PP_TASK_ID, Workspace, nnunet_cmd, python_cmd

ROW = "preprocess"
TITLE = "1. Plan + preprocess"


def _run_side(ws: Workspace, side: str, rep: int, figures: dict) -> float:
    p = ws.profile
    out = ws.root / f"pp_{side}_{rep}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    n = str(p.pp_workers)
    if side == "ours":
        cmd = python_cmd("c2fnas_auto.cli.plan_and_preprocess", "-t", str(PP_TASK_ID), "-np", n, "--no-progress")
        env = ws.ours_env(out, ws.sub("results_ours"))
    else:
        cmd = nnunet_cmd("nnUNetv2_plan_and_preprocess") + ["-d", str(PP_TASK_ID), "-c", "3d_fullres", "-np", n,
                                                            "-npfp", n, "--verify_dataset_integrity"]
        env = ws.nnunet_env(out)
    res = run_measured(cmd, ws.root / "logs" / f"pp_{side}_{rep}.log", env=env)
    if res.returncode != 0:
        raise RuntimeError(f"{side} plan+preprocess exited {res.returncode}: {tail(res.log, 4)}")
    figures.setdefault(side, []).append({"seconds": res.seconds, "max_rss_bytes": res.max_rss_bytes,
                                         "peak_tree_rss_bytes": res.peak_tree_rss_bytes})
    figures.setdefault(f"{side}_command", " ".join(cmd))
    if rep == p.reps - 1:
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
    ws.pp_task()
    figures: dict = {}
    ours, peer = alternate(lambda i: _run_side(ws, "ours", i, figures),
                           lambda i: _run_side(ws, "nnunet", i, figures), profile.reps)
    mem = {side: {k: median([r[k] for r in figures[side] if r[k] is not None])
                  for k in ("max_rss_bytes", "peak_tree_rss_bytes")} for side in ("ours", "nnunet")}
    t_ours, t_peer = median(ours), median(peer)
    r = paired_ratio(ours, peer)
    return RowResult(
        row=ROW, title=TITLE,
        note=(f"{profile.pp_cases} cases {'x'.join(map(str, profile.pp_shape))} voxels, spacing "
              f"{'x'.join(map(str, profile.pp_spacing))} mm, -np {profile.pp_workers}; memory = peak summed PSS "
              f"of the process tree (ours {fmt_bytes(mem['ours']['peak_tree_rss_bytes'])}, nnU-Net "
              f"{fmt_bytes(mem['nnunet']['peak_tree_rss_bytes'])})"),
        summary=Summary(ours=f"{fmt_seconds(t_ours)}, {fmt_bytes(mem['ours']['peak_tree_rss_bytes'])}",
                        peer=f"nnU-Net v2 {fmt_seconds(t_peer)}, {fmt_bytes(mem['nnunet']['peak_tree_rss_bytes'])}",
                        ratio=r, goal="time <= 0.5x nnU-Net", met=None if r is None else r <= 0.5),
        details={"seconds_ours": ours, "seconds_nnunet": peer, "median_seconds_ours": t_ours,
                 "median_seconds_nnunet": t_peer, "memory_median": mem, "runs": figures,
                 "memory_ratio_tree": ratio(mem["ours"]["peak_tree_rss_bytes"], mem["nnunet"]["peak_tree_rss_bytes"])},
    )
