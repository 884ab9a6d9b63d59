"""Row 6: what the search costs: seconds per coarse candidate and per supernet epoch,
and the default budget's projected hours at that speed.

A small real search (`c2fnas_search`, the user's command) runs on a small synthetic task
planned through the normal planner; its report holds the measured speeds and the
projection of the default budget (documentation/howto/search.md). On a CPU with narrow plans
the projection describes *those* plans on *this* machine, not a GPU at deployment width:
the table says so. The original C2FNAS search took 333 GPU-days; our bar is 24 GPU-hours.
"""

from __future__ import annotations

from benchmarks.common import Profile, RowResult, Summary, require_our
from benchmarks.procs import run_measured, tail
from benchmarks.workspace import SEARCH_TASK_ID, Workspace, python_cmd
from c2fnas_auto.utils.io import load_json

ROW = "search_cost"
TITLE = "6. Search cost"
GPU_DAY_HOURS = 24.0


def prepared_search_task(ws: Workspace):
    """Plan + preprocess the search task once (narrow plans for a CPU). Returns (plans, preprocessed dir)."""
    key = "search-task"
    if key not in ws._prepared:
        from c2fnas_auto.planning.pipeline import plan_and_preprocess

        task = ws.search_task()
        pre = ws.sub("prepared_search")
        ws.set_ours_env(pre, ws.sub("results_search"))
        plans = plan_and_preprocess(task.name, gpu_memory_gb=0.25, base_channels=ws.profile.search_base_channels,
                                    num_workers=ws.profile.pp_workers, progress=False)
        ws._prepared[key] = (plans, pre / task.name)
    return ws._prepared[key]


def search_args(profile: Profile) -> list[str]:
    return ["-t", str(SEARCH_TASK_ID), "--coarse-candidates", "3", "--clusters", "3", "--population", "3",
            "--min-epochs", "1", "--eta", "3", "--rungs", "2", "--standalone-sample", "1",
            "--fine-epochs", "1", "--generations", "2",
            "--iters-per-epoch", str(profile.search_iters), "--device", "cpu", "--seed", "0", "--no-progress"]


def searched(ws: Workspace) -> dict:
    """Run the small search once per workspace; returns {"seconds", "report", "plans_file", "command"}."""
    key = "search-run"
    if key not in ws._prepared:
        _, pre = prepared_search_task(ws)
        args = search_args(ws.profile) + ["--overwrite"]
        cmd = python_cmd("c2fnas_auto.cli.search", *args)
        res = run_measured(cmd, ws.root / "logs" / "search.log", env=ws.ours_env(pre.parent, ws.sub("results_search")))
        if res.returncode != 0:
            raise RuntimeError(f"c2fnas_search exited {res.returncode}: {tail(res.log, 3)}")
        report = ws.sub("results_search") / pre.name / "search" / "report.json"  # paths.search_results_dir there
        ws._prepared[key] = {"seconds": res.seconds, "report": load_json(report, "search report"),
                             "plans_file": pre / "plans.json", "command": "c2fnas_search " + " ".join(args)}
    return ws._prepared[key]


def run(ws: Workspace, profile: Profile) -> RowResult:
    require_our("c2fnas_auto.search.api")
    import torch

    out = searched(ws)
    rep = out["report"]
    sp = report_speeds(rep)
    per_cand, per_sup_epoch = sp["seconds_per_coarse_candidate"], sp["seconds_per_supernet_epoch"]
    per_default_cand, hours = sp["seconds_per_default_coarse_candidate"], sp["projected_total_hours"]
    defaults = _default_settings()
    proj = rep.get("projection_for_default_budget", {})
    device = "GPU" if torch.cuda.is_available() else "CPU"
    plans = load_json(out["plans_file"], "plans")
    st = rep.get("settings", {})
    parts = []
    if per_cand is not None:
        parts.append(f"{per_cand:.1f} s per coarse evaluation here (rungs of {st.get('min_epochs')} x "
                     f"{st.get('eta')}^r epochs x {st.get('iters_per_epoch')} iters + scoring)")
    if per_default_cand is not None:
        parts.append(f"{per_default_cand / 60:.0f} min per rung-0 candidate at the default schedule")
    if per_sup_epoch is not None:
        parts.append(f"{per_sup_epoch:.0f} s per supernet epoch of {defaults['iters_per_epoch']} iters")
    parts.append(f"default budget projected {hours:.1f} {device}-hours" if hours is not None else "no projection")
    ours = "; ".join(parts)
    return RowResult(
        row=ROW, title=TITLE,
        note=(f"measured on {device}, plans patch {'x'.join(map(str, plans['patch_size']))}, base width "
              f"{plans.get('base_channels')} (narrow CPU plans: not the deployment width of a GPU run); whole small "
              f"search {out['seconds']:.0f} s wall; command `{out['command']}`"),
        summary=Summary(ours=ours, peer="original C2FNAS: 333 GPU-days", ratio=None,
                        goal="default budget <= 24 GPU-hours",
                        met=(hours <= GPU_DAY_HOURS) if (hours is not None and device == "GPU") else None),
        details={"projection": proj, "compute_seconds": rep.get("compute_seconds"),
                 "wall_seconds": out["seconds"], "settings": rep.get("settings"), "device": device,
                 "seconds_per_supernet_epoch": per_sup_epoch, "seconds_per_coarse_candidate": per_cand,
                 "seconds_per_default_coarse_candidate": per_default_cand, "default_settings": defaults},
    )


def report_speeds(rep: dict) -> dict:
    """The speeds a search report measured, scaled to the default schedule (row 6 and the GPU check)."""
    proj = rep.get("projection_for_default_budget", {})
    counts, secs = rep.get("counts", {}), rep.get("compute_seconds", {})
    trained = counts.get("coarse_trained") or 0  # evaluations over all rungs
    per_cand = secs.get("coarse", 0.0) / trained if trained else proj.get("seconds_per_coarse_candidate")
    per_sup_iter = proj.get("seconds_per_supernet_iteration")
    defaults = _default_settings()
    per_sup_epoch = per_sup_iter * defaults["iters_per_epoch"] if per_sup_iter is not None else None
    per_iter = proj.get("seconds_per_coarse_iteration")
    # one rung-0 candidate at the default schedule (min epochs); higher rungs train eta^r times longer
    per_default_cand = (per_iter * defaults["min_epochs"] * defaults["iters_per_epoch"]
                        + proj.get("seconds_per_coarse_scoring", 0.0)) if per_iter is not None else None
    return {"seconds_per_coarse_candidate": per_cand, "seconds_per_supernet_epoch": per_sup_epoch,
            "seconds_per_default_coarse_candidate": per_default_cand,
            "projected_total_hours": proj.get("projected_total_hours")}


def _default_settings() -> dict:
    from dataclasses import asdict

    from c2fnas_auto.search.settings import SearchSettings

    return asdict(SearchSettings())
