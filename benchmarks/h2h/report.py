"""Summary JSON and plots, regenerated from the cells' files (never from a run's memory)."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from c2fnas_auto.utils.io import atomic_write_json, atomic_write_text, load_json, save_figure


def load_cells(results_dir: Path) -> list[dict[str, Any]]:
    return [load_json(p, "head-to-head cell") for p in sorted((results_dir / "cells").glob("*.json"))]


def _stats(values: list[float]) -> dict[str, Any]:
    vals = [v for v in values if not math.isnan(v)]
    return {"mean": statistics.fmean(vals) if vals else None,
            "sd": statistics.stdev(vals) if len(vals) > 1 else None,
            "min": min(vals) if vals else None, "max": max(vals) if vals else None, "n": len(vals)}


NO_MIRROR = " (no mirroring)"


def arm_label(cell: dict[str, Any]) -> str:
    """The arm as the summary shows it; predictions without test-time mirroring are told apart."""
    return cell["arm"] + ("" if cell.get("mirroring", True) else NO_MIRROR)


def summarize(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """Per task, budget and arm: test Dice over seeds (mean, sd, range, per seed, per class),
    iterations, train wall/CPU time, peak memory; and each arm's Dice minus nnU-Net's."""
    groups: dict[tuple, list[dict]] = {}
    for c in cells:
        arm = arm_label(c)
        groups.setdefault((c["task"], float(c["budget_min"]), arm), []).append(c)
    out: dict[str, Any] = {}
    for (task, budget, arm), cs in sorted(groups.items()):
        cs = sorted(cs, key=lambda c: c["seed"])
        classes = sorted({k for c in cs for k in c["test"]["dice_per_class"]})
        entry = {
            "seeds": [c["seed"] for c in cs],
            "test_dice": _stats([c["test"]["dice"] for c in cs]),
            "test_dice_per_seed": [c["test"]["dice"] for c in cs],
            "test_dice_per_class": {k: _stats([c["test"]["dice_per_class"][k] for c in cs]) for k in classes},
            "iterations": [c["schedule"]["iterations"] for c in cs],
            "patch_size": cs[0]["plan"]["patch_size"], "batch_size": cs[0]["plan"]["batch_size"],
            "train_wall_s": [c["train"]["wall_s"] for c in cs],
            "train_cpu_s": [c["train"]["cpu_s"] for c in cs],
            "predicted_train_s": [c["predicted_train_s"] for c in cs],
            "peak_tree_pss_bytes": max((c["train"]["peak_tree_pss_bytes"] or 0) for c in cs),
            "nnunet_evaluator_dice": [c["nnunet_evaluator"]["dice"] if c.get("nnunet_evaluator") else None
                                      for c in cs],
        }
        out.setdefault(task, {}).setdefault(f"{budget:g}", {})[arm] = entry
    for (task, budget, arm), cs in groups.items():
        ref_cells = groups.get((task, budget, "nnunet" + (NO_MIRROR if arm.endswith(NO_MIRROR) else "")), [])
        out[task][f"{budget:g}"][arm]["minutes_to_nnunet_final_val_dice"] = time_to_reach(cs, ref_cells)
    for task in out.values():
        for arms in task.values():
            for arm, e in arms.items():
                ref = arms.get("nnunet" + (NO_MIRROR if arm.endswith(NO_MIRROR) else ""), {}) \
                    .get("test_dice", {}).get("mean")
                m = e["test_dice"]["mean"]
                e["minus_nnunet"] = None if ref is None or m is None else m - ref
    return out


def time_to_reach(cells: list[dict[str, Any]], nnunet_cells: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Training minutes until each run's validation pseudo Dice first reaches nnU-Net's final
    one (the mean over nnU-Net's seeds of its last epoch's value, same budget); None per run
    that never does, and None overall without nnU-Net runs. Each trainer computes its own
    pseudo Dice (on sampled fold-0 validation patches), so this is a guide, not a test score."""
    finals = [c["val_curve"][-1][1] for c in nnunet_cells if c.get("val_curve")]
    if not finals:
        return None
    target = statistics.fmean(finals)
    per_seed = []
    for c in sorted(cells, key=lambda c: c["seed"]):
        hit = next((t for t, d in c.get("val_curve") or [] if not math.isnan(d) and d >= target), None)
        per_seed.append(None if hit is None else hit / 60.0)
    return {"target": target, "per_seed": per_seed}


def plot(cells: list[dict[str, Any]], out_png: Path) -> Path | None:
    """Left per task: test Dice against budget per arm (a dot per seed, a line through the
    means). Right per task: validation pseudo Dice against training wall-clock per run."""
    if not cells:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({c["task"] for c in cells})
    fig, axes = plt.subplots(len(tasks), 2, figsize=(11, 4 * len(tasks)), squeeze=False)
    colours = {"nnunet": "tab:blue", "ours": "tab:orange", "ours_bf16": "tab:green", "ours_ds": "tab:red"}
    for row, task in zip(axes, tasks):
        tc = [c for c in cells if c["task"] == task]
        for arm in sorted({arm_label(c) for c in tc}):
            ac = [c for c in tc if arm_label(c) == arm]
            col = colours.get(arm.removesuffix(NO_MIRROR))
            row[0].scatter([c["budget_min"] for c in ac], [c["test"]["dice"] for c in ac], color=col, s=14)
            budgets = sorted({c["budget_min"] for c in ac})
            means = [statistics.fmean(c["test"]["dice"] for c in ac if c["budget_min"] == b) for b in budgets]
            row[0].plot(budgets, means, marker="o", color=col, label=arm)
            for c in ac:
                if c["val_curve"]:
                    row[1].plot([p[0] / 60 for p in c["val_curve"]], [p[1] for p in c["val_curve"]], color=col,
                                marker=".", alpha=0.7, label=f"{arm} {c['budget_min']:g} min s{c['seed']}")
        row[0].set(title=f"{task}: test Dice vs budget", xlabel="training budget (min)", ylabel="test Dice")
        row[1].set(title=f"{task}: validation pseudo Dice", xlabel="training wall-clock (min)",
                   ylabel="pseudo Dice (fold 0)")
        row[0].legend(fontsize=8)
        row[1].legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, out_png)


def _fmt(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def markdown_table(summary: dict[str, Any]) -> str:
    """The summary as the table documentation/studies/head_to_head.md shows (copied from here,
    so the page's figures are the files' figures)."""
    head = ("| task | budget | arm | patch x batch | iterations | test Dice mean (sd) | per seed | per class "
            "| min to nnU-Net's final val Dice | train wall s | peak MB |\n" + "| --- " * 11 + "|\n")
    rows = []
    for task, budgets in summary.items():
        for budget, arms in sorted(budgets.items(), key=lambda kv: float(kv[0])):
            for arm, e in arms.items():
                td = e["test_dice"]
                classes = ", ".join(f"{k} {_fmt(v['mean'])}" for k, v in e["test_dice_per_class"].items())
                reach = e.get("minutes_to_nnunet_final_val_dice")
                reach_s = "n/a" if reach is None else " / ".join(
                    "not reached" if m is None else f"{m:.1f}" for m in reach["per_seed"])
                rows.append(f"| {task} | {budget} min | {arm} | {'x'.join(map(str, e['patch_size']))} x "
                            f"{e['batch_size']} | {', '.join(map(str, e['iterations']))} | {_fmt(td['mean'])} "
                            f"({_fmt(td['sd'])}) | {', '.join(_fmt(v) for v in e['test_dice_per_seed'])} | "
                            f"{classes} | {reach_s} | {', '.join(f'{w:.0f}' for w in e['train_wall_s'])} | "
                            f"{e['peak_tree_pss_bytes'] / 2**20:.0f} |")
    return head + "\n".join(rows) + "\n"


def write_report(results_dir: Path) -> dict[str, Any]:
    cells = load_cells(results_dir)
    summary = summarize(cells)
    atomic_write_json(results_dir / "summary.json", summary)
    atomic_write_text(results_dir / "summary.md", markdown_table(summary))
    plot(cells, results_dir / "head_to_head.png")
    return summary
