"""Summary of the start study: per variant and width, non-starts, dead-head fractions, organ
and lesion Dice, and the Dice difference to today's network paired by (genotype, seeds)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from c2fnas_auto.utils.io import atomic_write_json, atomic_write_text, load_json, save_figure

BASELINE = "today"


def load_records(out: Path) -> dict[str, dict[str, Any]]:
    """Every stored job of every shard file, by job key (a key stored twice keeps the first)."""
    records: dict[str, dict[str, Any]] = {}
    for path in sorted(Path(out).glob("results*.json")):
        for r in load_json(path, "start study results").get("records", []):
            records.setdefault(r["key"], r)
    return records


def _mean(vals: list[float]) -> float | None:
    vals = [v for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(vals)) if vals else None


def _paired(records: dict[str, dict[str, Any]], variant: str, width: int, only_started: bool) -> dict[str, Any]:
    """Dice(variant) - Dice(today) over the jobs both have; `only_started`: where both started."""
    diffs = []
    for r in records.values():
        j = r["job"]
        if j["variant"] != variant or j["width"] != width:
            continue
        base = records.get("|".join([BASELINE] + r["key"].split("|")[1:]))
        if base is None:
            continue
        a, b = r["scores"], base["scores"]
        if only_started and (a["non_start"] or b["non_start"]):
            continue
        diffs.append(a["mean_fg_dice"] - b["mean_fg_dice"])
    if not diffs:
        return {"n": 0}
    d = np.asarray(diffs)
    sd = float(d.std(ddof=1)) if len(d) > 1 else None
    se = sd / math.sqrt(len(d)) if sd is not None else None
    return {"n": len(d), "mean": float(d.mean()), "sd": sd, "se": se,
            "ci95": [float(d.mean() - 1.96 * se), float(d.mean() + 1.96 * se)] if se is not None else None}


def monitor_verdict(scores: dict[str, Any]) -> bool:
    """StartMonitor's end-of-run verdict from the stored epoch signals (today's rule, so
    records stored under an older rule are judged alike)."""
    from c2fnas_auto.training.start_check import StartMonitor

    m = StartMonitor()
    for e in scores["epochs"]:
        m.update(e["loss"], e["foreground_tp"], e["dead_head_fraction"])
    return m.not_started(final=True)


def summarise(records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in records.values():
        groups.setdefault((r["job"]["variant"], r["job"]["width"]), []).append(r)
    rows = []
    for (variant, width), rs in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0] != BASELINE, kv[0][0])):
        s = [r["scores"] for r in rs]
        fails = [r for r in rs if r["scores"]["non_start"]]
        rows.append({
            "variant": variant, "width": width, "trainings": len(rs), "non_starts": len(fails),
            "non_start_jobs": sorted(r["key"] for r in fails),
            "monitor_flagged": sum(monitor_verdict(x) for x in s),
            "monitor_agrees": sum(monitor_verdict(x) == bool(x["non_start"]) for x in s),
            "dice": _mean([x["mean_fg_dice"] for x in s]),
            "dice_started": _mean([x["mean_fg_dice"] for x in s if not x["non_start"]]),
            "organ": _mean([x["class_dice"].get("1") for x in s]),
            "lesion": _mean([x["class_dice"].get("2") for x in s]),
            "lesion_learned": sum((x["class_dice"].get("2") or 0) >= 0.05 for x in s),
            "dead_init": _mean([x["dead_head_init"] for x in s]),
            "dead_end": _mean([x["dead_head_end"] for x in s]),
            "dead_end_non_starts": _mean([x["scores"]["dead_head_end"] for x in fails]),
            "paired_all": _paired(records, variant, width, False),
            "paired_started": _paired(records, variant, width, True),
            "cpu_seconds": _mean([x["cpu_seconds"] for x in s]),
        })
    return {"rows": rows, "trainings": len(records)}


def _f(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _pair_text(p: dict[str, Any]) -> str:
    if not p.get("n"):
        return "-"
    sd = f" sd {p['sd']:.3f}" if p.get("sd") is not None else ""
    return f"{p['mean']:+.3f}{sd} (n {p['n']})"


def markdown(summary: dict[str, Any]) -> str:
    lines = ["| variant | width | trainings | non-starts | dead head init / end (non-starts) | organ | lesion "
             "(learned) | Dice all / started | paired vs today: all | paired: both started | CPU-s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary["rows"]:
        lines.append(
            f"| {r['variant']} | {r['width']} | {r['trainings']} | **{r['non_starts']}** | {_f(r['dead_init'])} / "
            f"{_f(r['dead_end'])} ({_f(r['dead_end_non_starts'])}) | {_f(r['organ'])} | {_f(r['lesion'])} "
            f"({r['lesion_learned']}) | {_f(r['dice'])} / {_f(r['dice_started'])} | {_pair_text(r['paired_all'])} | "
            f"{_pair_text(r['paired_started'])} | {_f(r['cpu_seconds'], 0)} |")
    lines.append("")
    lines.append(f"{summary['trainings']} trainings. Non-start: held-out foreground Dice < 0.05. Monitor agreement "
                 "(StartMonitor verdict at the end vs that definition): " + ", ".join(
                     f"{r['variant']}@{r['width']} {r['monitor_agrees']}/{r['trainings']}" for r in summary["rows"]))
    return "\n".join(lines) + "\n"


def plot(records: dict[str, dict[str, Any]], summary: dict[str, Any], png: Path) -> None:
    """Held-out Dice of every training per variant (red: non-start), and the paired difference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["rows"]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(8, 1.1 * len(rows)), 9))
    labels = [f"{r['variant']}\nw{r['width']}" for r in rows]
    rng = np.random.default_rng(0)
    for i, r in enumerate(rows):
        rs = [x for x in records.values() if x["job"]["variant"] == r["variant"] and x["job"]["width"] == r["width"]]
        y = [x["scores"]["mean_fg_dice"] for x in rs]
        c = ["tab:red" if x["scores"]["non_start"] else "tab:blue" for x in rs]
        ax1.scatter(i + rng.uniform(-0.2, 0.2, len(y)), y, c=c, s=14, alpha=0.8)
        ax1.text(i, 1.02, f"{r['non_starts']}/{r['trainings']}", ha="center", fontsize=8, color="tab:red")
    ax1.set_xticks(range(len(rows)), labels, fontsize=7)
    ax1.set_ylim(-0.03, 1.08)
    ax1.set_ylabel("held-out foreground Dice")
    ax1.set_title("each training (red: non-start, Dice < 0.05); top: non-starts / trainings", fontsize=9)
    for i, r in enumerate(rows):
        p = r["paired_started"]
        if p.get("n") and p.get("se") is not None:
            ax2.errorbar(i, p["mean"], yerr=1.96 * p["se"], fmt="o", color="tab:green", capsize=3)
    ax2.axhline(0, color="k", lw=0.6)
    ax2.set_xticks(range(len(rows)), labels, fontsize=7)
    ax2.set_ylabel("Dice - today's (paired, both started)")
    ax2.set_title("paired difference to today's network, mean +- 95% interval", fontsize=9)
    fig.tight_layout()
    save_figure(fig, png, dpi=90)


def write_summary(out: Path) -> dict[str, Any]:
    out = Path(out)
    records = load_records(out)
    summary = summarise(records)
    atomic_write_json(out / "summary.json", summary)
    atomic_write_text(out / "summary.md", markdown(summary))
    if records:
        plot(records, summary, out / "start_study.png")
    return summary


if __name__ == "__main__":  # pragma: no cover - convenience
    import sys

    print(json.dumps(write_summary(Path(sys.argv[1]))["rows"], indent=1))
