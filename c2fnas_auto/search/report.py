"""report.json and search_progress.png: what the search found and what it cost.

Both are derived from the state only, so they can be regenerated at any time and a
resumed search reports the compute of all its runs (seconds are stored per candidate).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from c2fnas_auto.search.state import CandidateRecord, SearchState
from c2fnas_auto.utils.io import atomic_path, atomic_write_json


def _summary(r: CandidateRecord) -> dict[str, Any]:
    return {"index": r.index, "levels": r.levels, "ops": r.ops, "score": r.score, "cluster": r.cluster,
            "generation": r.generation, "params": r.params, "flops": r.flops,
            "training_bytes": r.training_bytes, "seconds": round(r.seconds, 3)}


def top_records(records: list[CandidateRecord], n: int = 5) -> list[CandidateRecord]:
    """Best `n` distinct trained candidates (reused copies left out)."""
    done = [r for r in records if r.status == "done" and r.score is not None]
    return sorted(done, key=lambda r: (-r.score, r.index))[:n]


def compute_seconds(state: SearchState) -> dict[str, float]:
    """Compute per stage: candidate seconds summed (all ranks' work), plus supernet
    training and clustering wall time."""
    return {
        "clustering": round(float(state.stage_seconds.get("clustering", 0.0)), 3),
        "coarse": round(sum(r.seconds for r in state.coarse), 3),
        "supernet": round(float(state.supernet.get("seconds", 0.0)), 3),
        "fine": round(sum(r.seconds for r in state.fine), 3),
    }


def projection(state: SearchState, default_settings: dict[str, Any]) -> dict[str, Any]:
    """Projected hours of the default budget at the speed measured in this run (same
    device, same plans): seconds per coarse training iteration and scoring, per supernet
    iteration and per fine evaluation, scaled to the default counts."""
    done = [r for r in state.coarse if r.status == "done"]
    out: dict[str, Any] = {"note": "projection = this run's measured speed x the default budget; "
                                   "measure on the target GPU for a real figure"}
    timed = [r for r in done if r.extra.get("train_iterations")]
    if timed:
        per_iter = sum(r.extra["train_seconds"] / r.extra["train_iterations"] for r in timed) / len(timed)
        per_score = sum(r.extra["score_seconds"] for r in timed) / len(timed)
        out["seconds_per_coarse_iteration"] = round(per_iter, 5)
        out["seconds_per_coarse_scoring"] = round(per_score, 3)
        iters = default_settings["coarse_epochs"] * default_settings["iters_per_epoch"]
        out["projected_coarse_hours"] = round(
            default_settings["coarse_candidates"] * (iters * per_iter + per_score) / 3600, 3)
    sup_iters = state.supernet.get("epochs", 0) * state.settings["iters_per_epoch"]
    if state.supernet.get("seconds") and sup_iters:
        per_iter = state.supernet["seconds"] / sup_iters
        out["seconds_per_supernet_iteration"] = round(per_iter, 5)
        out["projected_supernet_hours"] = round(
            default_settings["fine_epochs"] * default_settings["iters_per_epoch"] * per_iter / 3600, 3)
    fine_done = [r for r in state.fine if r.status == "done"]
    if fine_done:
        per_eval = sum(r.seconds for r in fine_done) / len(fine_done)
        p, g = default_settings["population"], default_settings["generations"]
        n_evals = p + (g - 1) * (p - max(1, p // 2))
        out["seconds_per_fine_evaluation"] = round(per_eval, 3)
        out["projected_fine_hours"] = round(n_evals * per_eval / 3600, 3)
    parts = [v for k, v in out.items() if k.startswith("projected_")]
    if len(parts) == 3:
        out["projected_total_hours"] = round(sum(parts), 3)
    return out


def build_report(state: SearchState, default_settings: dict[str, Any],
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
    secs = compute_seconds(state)
    report: dict[str, Any] = {
        "task_name": state.task_name,
        "finished": state.finished,
        "winner": state.winner,
        "settings": state.settings,
        "searched_at": state.plans,
        "counts": {
            "coarse_proposed": len(state.coarse),
            "coarse_trained": sum(r.status == "done" for r in state.coarse),
            "coarse_skipped": sum(r.status == "skipped" for r in state.coarse),
            "fine_proposed": len(state.fine),
            "fine_scored": sum(r.status == "done" for r in state.fine),
            "fine_skipped": sum(r.status == "skipped" for r in state.fine),
        },
        "top_coarse": [_summary(r) for r in top_records(state.coarse)],
        "top_fine": [_summary(r) for r in top_records(state.fine)],
        "fine_generations": state.fine_generations,
        "compute_seconds": secs,
        "compute_seconds_total": round(sum(secs.values()), 3),
        "compute_hours_total": round(sum(secs.values()) / 3600, 4),
        "projection_for_default_budget": projection(state, default_settings),
        "reference": "the original C2FNAS search took 333 GPU-days; the target here is <= 24 GPU-hours",
    }
    if extra:
        report.update(extra)
    return report


def write_report(path: Path, state: SearchState, default_settings: dict[str, Any],
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
    report = build_report(state, default_settings, extra)
    atomic_write_json(path, report)
    return report


def plot_progress(state: SearchState, out_png: Path) -> None:
    """Left: coarse score per candidate index coloured by cluster (x = skipped).
    Right: fine-stage best and mean fitness per generation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ok = [r for r in state.coarse if r.score is not None]
    if ok:
        clusters = [r.cluster or 0 for r in ok]
        n = max(clusters) + 1  # one discrete colour per cluster id, not a continuous scale
        sc = ax1.scatter([r.index for r in ok], [r.score for r in ok], c=clusters,
                         cmap=matplotlib.colormaps["tab20"].resampled(n), vmin=-0.5, vmax=n - 0.5, s=22, edgecolors="k",
                         linewidths=0.3)
        if len(set(clusters)) > 1:
            bar = fig.colorbar(sc, ax=ax1, label="cluster")
            bar.locator = MaxNLocator(integer=True)
            bar.update_ticks()
    skipped = [r for r in state.coarse if r.status == "skipped"]
    if skipped:
        ax1.scatter([r.index for r in skipped], [0.0] * len(skipped), marker="x", c="grey", label="skipped (memory)")
        ax1.legend(loc="best", fontsize=8)
    ax1.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax2.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax1.set_xlabel("coarse candidate")
    ax1.set_ylabel("validation foreground Dice")
    ax1.set_title("coarse stage (topologies)")
    gens = [g for g in state.fine_generations if g.get("best") is not None]
    if gens:
        x = [g["generation"] for g in gens]
        ax2.plot(x, [g["best"] for g in gens], "o-", label="best")
        ax2.plot(x, [g["mean"] for g in gens], "s--", label="mean")
        ax2.legend(loc="best", fontsize=8)
    ax2.set_xlabel("generation")
    ax2.set_ylabel("fitness (shared-weight Dice)")
    ax2.set_title("fine stage (operations)")
    fig.tight_layout()
    with atomic_path(out_png, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
