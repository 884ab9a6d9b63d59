"""report.json, search_progress.png and search_ranking.png: what the search found, what it cost,
and whether its cheap scores rank candidates like the expensive ones.

All are derived from the state only, so they can be regenerated at any time and a
resumed search reports the compute of all its runs (seconds are stored per candidate).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from c2fnas_auto.search.kendall import kendall_tau_b
from c2fnas_auto.search.noise import noise_check
from c2fnas_auto.search.state import CandidateRecord, SearchState, best_first
from c2fnas_auto.utils.io import atomic_write_json, save_figure


def _summary(r: CandidateRecord) -> dict[str, Any]:
    return {"index": r.index, "levels": r.levels, "ops": r.ops, "score": r.score, "cluster": r.cluster,
            "generation": r.generation, "candidate": r.candidate, "rung": r.rung, "epochs": r.epochs,
            "params": r.params, "flops": r.flops,
            "training_bytes": r.training_bytes, "seconds": round(r.seconds, 3)}


def _top_rung(state: SearchState) -> int | None:
    return max((r.rung for r in state.coarse if r.ok and r.rung is not None), default=None)


def top_records(records: list[CandidateRecord], n: int = 5) -> list[CandidateRecord]:
    """Best `n` distinct trained candidates (reused copies left out)."""
    done = [r for r in records if r.status == "done" and r.score is not None]
    return sorted(done, key=best_first)[:n]


def compute_seconds(state: SearchState) -> dict[str, float]:
    """Compute per stage: candidate seconds summed (all ranks' work), plus supernet
    training and clustering wall time."""
    return {
        "clustering": round(float(state.stage_seconds.get("clustering", 0.0)), 3),
        "coarse": round(sum(r.seconds for r in state.coarse), 3),
        "supernet": round(float(state.supernet.get("seconds", 0.0)), 3),
        "fine": round(sum(r.seconds for r in state.fine), 3),
        "standalone": round(sum(r.seconds for r in state.standalone), 3),
        "repeats": round(sum(r.seconds for r in state.coarse_repeat + state.standalone_repeat), 3),
    }


def expected_coarse_evaluations(settings: dict[str, Any]) -> list[tuple[int, int]]:
    """(evaluations, epochs) per rung of synchronous successive halving with these settings:
    N at rung 0, N // eta at rung 1, ... (asynchronous promotion runs about as many, a few
    more when early promotions later drop out of a rung's top 1/eta)."""
    n, eta = settings["coarse_candidates"], settings["eta"]
    return [(n // eta ** r, settings["min_epochs"] * eta ** r) for r in range(settings["rungs"])]


def projection(state: SearchState, default_settings: dict[str, Any]) -> dict[str, Any]:
    """Projected hours of the default budget at the speed measured in this run (same
    device, same plans): seconds per coarse training iteration and scoring, per supernet
    iteration and per fine evaluation, scaled to the default counts."""
    done = [r for r in state.coarse + state.standalone if r.status == "done"]
    out: dict[str, Any] = {"note": "projection = this run's measured speed x the default budget; "
                                   "measure on the target GPU for a real figure"}
    timed = [r for r in done if r.extra.get("train_iterations")]
    d = default_settings
    if timed:
        per_iter = sum(r.extra["train_seconds"] / r.extra["train_iterations"] for r in timed) / len(timed)
        per_score = sum(r.extra["score_seconds"] for r in timed) / len(timed)
        out["seconds_per_coarse_iteration"] = round(per_iter, 5)
        out["seconds_per_coarse_scoring"] = round(per_score, 3)
        rungs = expected_coarse_evaluations(d)
        out["projected_coarse_hours"] = round(
            sum(n * (e * d["iters_per_epoch"] * per_iter + per_score) for n, e in rungs) / 3600, 3)
        top_epochs = rungs[-1][1]
        out["projected_standalone_hours"] = round(
            d["standalone_sample"] * (top_epochs * d["iters_per_epoch"] * per_iter + per_score) / 3600, 3)
    sup_iters = state.supernet.get("epochs", 0) * state.settings["iters_per_epoch"]
    if state.supernet.get("seconds") and sup_iters:
        per_iter = state.supernet["seconds"] / sup_iters
        out["seconds_per_supernet_iteration"] = round(per_iter, 5)
        out["projected_supernet_hours"] = round(d["fine_epochs"] * d["iters_per_epoch"] * per_iter / 3600, 3)
    fine_done = [r for r in state.fine if r.status == "done"]
    if fine_done:
        per_eval = sum(r.seconds for r in fine_done) / len(fine_done)
        p, g = d["population"], d["generations"]
        n_evals = p + (g - 1) * (p - max(1, p // 2))
        out["seconds_per_fine_evaluation"] = round(per_eval, 3)
        out["projected_fine_hours"] = round(n_evals * per_eval / 3600, 3)
    parts = [v for k, v in out.items() if k.startswith("projected_")]
    if len(parts) == 4:
        out["projected_total_hours"] = round(sum(parts), 3)
    return out


def rung_pairs(state: SearchState) -> list[dict[str, Any]]:
    """For each pair of consecutive rungs, the candidates scored on both: (cheap, expensive)."""
    scores: dict[tuple[int, int], float] = {(r.candidate, r.rung): r.score for r in state.coarse
                                            if r.status == "done" and r.score is not None and r.rung is not None
                                            and r.candidate is not None}
    top = max((r for _, r in scores), default=0)
    out = []
    for rung in range(top):
        both = sorted(c for c, r in scores if r == rung + 1 and (c, rung) in scores)
        out.append({"from_rung": rung, "to_rung": rung + 1,
                    "pairs": [[c, scores[(c, rung)], scores[(c, rung + 1)]] for c in both]})
    return out


def ranking_checks(state: SearchState) -> dict[str, Any]:
    """Kendall tau-b between consecutive rungs (promoted candidates) and between the
    supernet's shared-weight fitness and stand-alone training of the same op choices."""
    coarse = []
    for item in rung_pairs(state):
        pairs = item["pairs"]
        coarse.append({**item, "n": len(pairs),
                       "kendall_tau_b": kendall_tau_b([p[1] for p in pairs], [p[2] for p in pairs])})
    fine_pairs: list[list[Any]] = []
    shared_scores: list[float] = []
    alone_scores: list[float] = []
    for r in state.standalone:
        if r.status != "done" or r.score is None:
            continue
        shared = next((f.score for f in state.fine if f.key() == r.key() and f.score is not None), None)
        if shared is not None:
            fine_pairs.append([list(r.ops), shared, r.score])
            shared_scores.append(shared)
            alone_scores.append(r.score)
    return {"coarse_rungs": coarse,
            "fine_standalone": {"n": len(fine_pairs),
                                "epochs": state.standalone[0].epochs if state.standalone else None,
                                "pairs": fine_pairs,
                                "kendall_tau_b": kendall_tau_b(shared_scores, alone_scores)},
            "note": "tau-b in [-1, 1]; None when fewer than 2 pairs or one side is constant. Promoted candidates "
                    "are the best of their rung, so the rung taus are taken over a narrowed range."}


def _scores(records: list[CandidateRecord]) -> dict[tuple, float]:
    return {r.key(): float(r.score) for r in records if r.status == "done" and r.score is not None}


def _repeat_scores(records: list[CandidateRecord]) -> dict[tuple, list[float]]:
    out: dict[tuple, list[float]] = {}
    for r in records:
        if r.status == "done" and r.score is not None:
            out.setdefault(r.key(), []).append(float(r.score))
    return out


def noise_checks(state: SearchState) -> dict[str, Any]:
    """Per stage, the spread of candidate scores against the seed-to-seed spread of the
    candidates re-trained with another seed (noise.py): rung 0 of the coarse stage, and the
    fine stage's op choices as trained stand-alone (shared-weight scores have no seed of
    their own short of training the supernet again)."""
    rung0 = [r for r in state.coarse if r.rung in (0, None)]
    checks = [noise_check("coarse rung 0", _scores(rung0), _repeat_scores(state.coarse_repeat)),
              noise_check("fine (stand-alone)", _scores(state.standalone), _repeat_scores(state.standalone_repeat))]
    return {"stages": [c.to_dict() for c in checks], "messages": [c.message() for c in checks],
            "within_noise": [c.stage for c in checks if c.within_noise],
            "note": "reliability = genotype variance / (genotype + seed variance) of one score; expected tau "
                    "assumes normal scores. Within noise unless reliability > 0.5 is shown at p < 0.05 (F test "
                    "of the candidates' against the seeds' variance)."}


def within_noise_warnings(report: dict[str, Any]) -> list[str]:
    """One plain line per stage whose ranking is within its noise (what the CLI prints)."""
    noise = report.get("noise") or {}
    return [f"{s['stage']}'s ranking is within its noise (reliability {s['reliability']:.2f}, "
            f"p {s['p_above_noise']:.2f} that it is above: candidates spread sd {s['score_sd']:.4f}, "
            f"seed-to-seed sd {s['seed_sd']:.4f}); "
            "its winner may be a lucky seed" for s in noise.get("stages", []) if s.get("within_noise")]


def _per_rung(records: list[CandidateRecord]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in records:
        if r.status == "done":
            out[str(r.rung)] = out.get(str(r.rung), 0) + 1
    return dict(sorted(out.items()))


def _restarts(records: list[CandidateRecord]) -> int:
    return sum(int(r.extra.get("restarted", 0)) for r in records if r.status == "done")


def build_report(state: SearchState, default_settings: dict[str, Any],
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
    secs = compute_seconds(state)
    report: dict[str, Any] = {
        "task_name": state.task_name,
        "finished": state.finished,
        "winner": state.winner,
        "settings": state.settings,
        "searched_at": state.plans,
        "heldout": state.heldout,
        "workers": len({r.worker for r in state.coarse + state.fine + state.standalone if r.worker}),
        "ranking": state.ranking or ranking_checks(state),
        "noise": state.noise or noise_checks(state),
        "budget": state.budget,
        "counts": {
            "coarse_candidates": len({r.candidate for r in state.coarse}),
            "coarse_trained": sum(r.status == "done" for r in state.coarse),
            "coarse_skipped": sum(r.status == "skipped" for r in state.coarse),
            "coarse_trained_per_rung": _per_rung(state.coarse),
            "standalone_trained": sum(r.status == "done" for r in state.standalone),
            "fine_proposed": len(state.fine),
            "fine_scored": sum(r.status == "done" for r in state.fine),
            "fine_skipped": sum(r.status == "skipped" for r in state.fine),
            "coarse_repeats_trained": sum(r.status == "done" for r in state.coarse_repeat),
            "standalone_repeats_trained": sum(r.status == "done" for r in state.standalone_repeat),
        },
        # trainings that did not start and were retrained once with a fresh init seed (coarse.train_started)
        "restarts": {"coarse": _restarts(state.coarse), "standalone": _restarts(state.standalone),
                     "supernet": int(state.supernet.get("restarted", 0))},
        "top_coarse": [_summary(r) for r in top_records([r for r in state.coarse if r.rung == _top_rung(state)])],
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


def _save(fig: Any, out_png: Path) -> None:
    fig.tight_layout()
    save_figure(fig, out_png)


def _figure(ncols: int, size: tuple[float, float]):
    # start-up: matplotlib costs about 1 s; the Agg backend is chosen before pyplot loads
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(1, ncols, figsize=size)


def plot_progress(state: SearchState, out_png: Path) -> None:
    """Left: coarse score per finished evaluation (in finish order), one colour per rung
    (x = skipped). Right: fine-stage best and mean fitness per generation."""
    # start-up: matplotlib costs about 1 s; the Agg backend is chosen before pyplot loads
    from matplotlib.ticker import MaxNLocator

    fig, (ax1, ax2) = _figure(2, (11, 4))
    ok = [(i, r) for i, r in enumerate(state.coarse) if r.score is not None]
    for rung in sorted({r.rung or 0 for _, r in ok}):
        pts = [(i, r.score) for i, r in ok if (r.rung or 0) == rung]
        epochs = next(r.epochs for _, r in ok if (r.rung or 0) == rung)
        ax1.scatter([x for x, _ in pts], [y for _, y in pts], s=22, edgecolors="k", linewidths=0.3,
                    label=f"rung {rung} ({epochs} epochs)")
    skipped = [i for i, r in enumerate(state.coarse) if r.status == "skipped"]
    if skipped:
        ax1.scatter(skipped, [0.0] * len(skipped), marker="x", c="grey", label="skipped (memory)")
    if ok or skipped:
        ax1.legend(loc="best", fontsize=8)
    ax1.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax2.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax1.set_xlabel("coarse evaluation (finish order)")
    ax1.set_ylabel("selection foreground Dice")
    ax1.set_title("coarse stage (topologies, successive halving)")
    gens = [g for g in state.fine_generations if g.get("best") is not None]
    if gens:
        x = [g["generation"] for g in gens]
        ax2.plot(x, [g["best"] for g in gens], "o-", label="best")
        ax2.plot(x, [g["mean"] for g in gens], "s--", label="mean")
        ax2.legend(loc="best", fontsize=8)
    ax2.set_xlabel("generation")
    ax2.set_ylabel("fitness (shared-weight Dice)")
    ax2.set_title("fine stage (operations)")
    _save(fig, out_png)


def _tau_text(tau: float | None) -> str:
    return "tau-b n/a" if tau is None else f"tau-b {tau:.2f}"


def plot_ranking(state: SearchState, out_png: Path) -> None:
    """The two ranking checks as scatters of cheap score (x) against expensive score (y):
    left, rung r vs rung r+1 for every promoted candidate; right, shared-weight fitness vs
    stand-alone training. A rising cloud means the cheap score ranks like the expensive one."""
    checks = state.ranking or ranking_checks(state)
    fig, (ax1, ax2) = _figure(2, (11, 4.5))
    for item in checks["coarse_rungs"]:
        pairs = item["pairs"]
        if pairs:
            ax1.scatter([p[1] for p in pairs], [p[2] for p in pairs], s=24, edgecolors="k", linewidths=0.3,
                        label=f"rung {item['from_rung']}->{item['to_rung']}: n={item['n']}, "
                              f"{_tau_text(item['kendall_tau_b'])}")
    if any(item["pairs"] for item in checks["coarse_rungs"]):
        ax1.legend(loc="best", fontsize=8)
    else:
        ax1.text(0.5, 0.5, "no candidate promoted", ha="center", va="center", transform=ax1.transAxes)
    ax1.set_xlabel("score at the lower rung (fewer epochs)")
    ax1.set_ylabel("score at the next rung")
    ax1.set_title("coarse: rung-to-rung ranking")
    fine = checks["fine_standalone"]
    if fine["pairs"]:
        ax2.scatter([p[1] for p in fine["pairs"]], [p[2] for p in fine["pairs"]], s=24, edgecolors="k",
                    linewidths=0.3, label=f"n={fine['n']}, {_tau_text(fine['kendall_tau_b'])}")
        ax2.legend(loc="best", fontsize=8)
    else:
        ax2.text(0.5, 0.5, "stand-alone check off (--standalone-sample 0)", ha="center", va="center",
                 transform=ax2.transAxes)
    ax2.set_xlabel("shared-weight fitness (supernet)")
    ax2.set_ylabel(f"stand-alone Dice ({fine.get('epochs')} epochs)")
    ax2.set_title("fine: supernet vs stand-alone")
    _save(fig, out_png)
