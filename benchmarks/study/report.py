"""Summary of the study's results file: per task and arm the mean and spread over seeds,
ranks, the p-values for "searched beats the random median", the search's own Kendall
taus, a markdown table, a box plot, a per-class plot and Dice against size. Works on partial results (whatever is
stored)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.study import stats
from benchmarks.study.profiles import StudyProfile
from benchmarks.study.store import ResultStore
from c2fnas_auto.utils.io import atomic_write_json, atomic_write_text, save_figure

SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
BOXPLOT = "dice_boxplot.png"
CLASS_PLOT = "dice_by_class.png"
SIZE_PLOT = "dice_by_size.png"


COMPARED = ("searched", "reference", "searched_3d")  # each vs the random median
# the named arms, in the order the plots show them
ARM_COLOURS = {"searched": "tab:red", "searched_3d": "tab:orange", "reference": "tab:blue", "nnunet": "tab:green"}
PAIRED = (("searched", "reference"), ("searched", "searched_3d"), ("searched", "nnunet"), ("reference", "nnunet"))


def _case_values(scores: dict[str, Any], label: str | None) -> dict[str, float | None]:
    """Per held-out case: the mean foreground Dice (label None) or one label's Dice (None
    where the label is in neither truth nor prediction)."""
    if label is None:
        return scores["case_mean"]
    return {c: d.get(label) for c, d in scores["per_case"].items()}


def matrices(records: list[dict[str, Any]], task: str,
             label: str | None = None) -> tuple[dict[str, np.ndarray], list[int], list[str]]:
    """arm -> (seeds, cases) of per-case mean foreground Dice (or one label's Dice), over the
    seeds every main arm has (so a partial run compares like with like; a cell-style arm
    lacking one of them gets NaN there); NaN where a case has no foreground."""
    recs = [r for r in records if r["task"] == task]
    arms = sorted({r["arm"] for r in recs})
    by_arm = {a: {r["seed"]: _case_values(r["scores"], label) for r in recs if r["arm"] == a} for a in arms}
    main = [v for a, v in by_arm.items() if "@" not in a] or list(by_arm.values())
    seeds = sorted(set.intersection(*(set(v) for v in main))) if main else []
    cases = sorted({c for v in by_arm.values() for s in v.values() for c in s})
    out = {}
    for a in arms:
        m = np.full((len(seeds), len(cases)), np.nan)
        for i, s in enumerate(seeds):
            for j, c in enumerate(cases):
                v = by_arm[a].get(s, {}).get(c)
                m[i, j] = np.nan if v is None else float(v)
        out[a] = m
    return out, seeds, cases


def find_taus(obj: Any, path: str = "") -> dict[str, float]:
    """Every numeric value under a key containing 'tau' in the search report (read
    defensively: the report's layout is the search engine's business)."""
    found: dict[str, float] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            p = f"{path}.{k}" if path else str(k)
            if "tau" in str(k).lower() and isinstance(v, (int, float)) and not isinstance(v, bool):
                found[p] = float(v)
            else:
                found.update(find_taus(v, p))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            found.update(find_taus(v, f"{path}[{i}]"))
    return found


def task_summary(records: list[dict[str, Any]], task: str, n_boot: int, label: str | None = None) -> dict[str, Any]:
    mats, seeds, cases = matrices(records, task, label)
    if not seeds:
        return {"seeds": [], "cases": len(cases), "arms": {}}
    scores = {a: stats.arm_score(m) for a, m in mats.items()}
    rank = stats.ranks(scores)
    arms = {a: {**stats.seed_spread(m), "score": scores[a], "rank": rank[a]} for a, m in mats.items()}
    random_names = sorted(a for a in mats if a.startswith("random_"))
    out: dict[str, Any] = {"seeds": seeds, "cases": len(cases), "arms": arms, "num_random": len(random_names)}
    out["noise"] = noise(mats, random_names)
    if random_names:
        rs = [scores[a] for a in random_names]
        out["random_median"] = float(np.median(rs))
        out["random_best"] = float(max(rs))
        for name in COMPARED:
            if name not in mats:
                continue
            boot = stats.bootstrap_p_value(mats[name], np.stack([mats[a] for a in random_names]), n_boot=n_boot,
                                           seed=0)
            out[f"{name}_vs_random_median"] = {
                "rank_among_random": 1 + sum(r > scores[name] for r in rs),
                "rank_p": stats.rank_p_value(scores[name], rs), "bootstrap": boot}
    for a, b in PAIRED:
        if a in mats and b in mats:
            out[f"{a}_vs_{b}"] = stats.paired_bootstrap(mats[a], mats[b], n_boot=n_boot, seed=0)
    params = {r["arm"]: r["scores"].get("params") for r in records if r["task"] == task}
    for a in arms:
        arms[a]["params"] = params.get(a)
    out["size"] = stats.size_adjusted(params, scores, random_names, COMPARED)
    return out


def class_summaries(records: list[dict[str, Any]], task: str, n_boot: int,
                    labels: dict[str, int]) -> dict[str, dict[str, Any]]:
    """The task summary once per foreground label (organ and lesion apart: a network can learn one
    and not the other)."""
    return {name: task_summary(records, task, n_boot, str(v)) for name, v in labels.items() if int(v) != 0}


def pooled(records: list[dict[str, Any]], tasks: list[str], n_boot: int) -> dict[str, Any]:
    """Searched vs random median averaged over every task that has both (bootstrap p)."""
    out = {}
    for name in ("searched", "reference"):
        pairs = []
        for task in tasks:
            mats, seeds, _ = matrices(records, task)
            randoms = sorted(a for a in mats if a.startswith("random_"))
            if seeds and name in mats and randoms:
                pairs.append((mats[name], np.stack([mats[a] for a in randoms])))
        out[name] = stats.pooled_bootstrap_p_value(pairs, n_boot=n_boot, seed=0)
    return out


def noise(mats: dict[str, np.ndarray], random_names: list[str]) -> dict[str, float | None]:
    """Is the ranking signal or noise? The pooled seed-to-seed sd of one genotype's score
    against the sd between the random genotypes' scores (each averaged over seeds)."""
    per_seed = [stats.seed_scores(m) for m in mats.values()]
    variances = [float(np.var(s[np.isfinite(s)], ddof=1)) for s in per_seed if np.isfinite(s).sum() > 1]
    seed_sd = float(np.sqrt(np.mean(variances))) if variances else None
    rs = [stats.arm_score(mats[a]) for a in random_names]
    between = float(np.std(rs, ddof=1)) if len(rs) > 1 else None
    return {"seed_sd_pooled": seed_sd, "random_between_sd": between}


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if isinstance(v, float) and 0 < v < 10 ** -digits:
        return f"< {10 ** -digits:g}"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def markdown(summary: dict[str, Any]) -> str:
    lines = [f"Profile `{summary['profile']}`: {summary['trainings']} trainings stored, "
             f"budget {summary['budget'].get('epochs')} epochs x {summary['budget'].get('iters_per_epoch')} "
             "iterations per training; Dice = mean foreground Dice per held-out case, averaged over cases; "
             "mean +- sd over seeds.", ""]
    for task, t in summary["tasks"].items():
        lines.append(f"**{task}** ({summary['task_info'].get(task, {}).get('describe', '')}); seeds {t['seeds']}, "
                     f"{t['cases']} held-out cases")
        lines.append("")
        lines.append("| arm | genotype | cell style | seeds | Dice mean | sd over seeds | min | max | seeds at Dice 0 "
                     "| rank |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|")
        for a, s in sorted(t["arms"].items(), key=lambda kv: kv[1]["rank"]):
            info = summary["arms"].get(a, {})
            lines.append(f"| {a} | {info.get('genotype_id', '')} | {info.get('cell_style', '')} | {s['n']} | "
                         f"{_fmt(s['mean'])} | {_fmt(s['std'])} | {_fmt(s['min'])} | "
                         f"{_fmt(s['max'])} | {s.get('zero_seeds', 0)} | {s['rank']} |")
        zero = sum(s.get("zero_seeds", 0) for s in t["arms"].values())
        total = sum(s["n"] for s in t["arms"].values())
        lines.append("")
        lines.append(f"trainings at Dice 0 on every held-out case (learned nothing): {zero} of {total}")
        if "random_median" in t:
            lines.append("")
            nz = t.get("noise", {})
            lines.append(f"random median {_fmt(t['random_median'])}, best {_fmt(t['random_best'])} "
                         f"(N = {t['num_random']}); sd between random genotypes {_fmt(nz.get('random_between_sd'))}, "
                         f"pooled seed-to-seed sd of one genotype {_fmt(nz.get('seed_sd_pooled'))}")
            for name in COMPARED:
                c = t.get(f"{name}_vs_random_median")
                if c:
                    b = c["bootstrap"]
                    lines.append(f"- {name} vs random median: difference {_fmt(b['diff'])} "
                                 f"(90% bootstrap interval {_fmt(b['low'])} .. {_fmt(b['high'])}), "
                                 f"bootstrap p {_fmt(b['p'])}; rank {c['rank_among_random']} of "
                                 f"{t['num_random'] + 1} vs the random genotypes, exact rank p {_fmt(c['rank_p'])}"
                                 + (" (one seed: the interval and p leave out seed-to-seed noise)"
                                    if len(t["seeds"]) < 2 else ""))
        size = t.get("size") or {}
        if size.get("slope_per_decade") is not None:
            parts = [f"{name} {_fmt(size[name]['params'] / 1e6, 2)}M params, residual {_fmt(size[name]['residual'])}, "
                     f"rank {size[name]['rank_among_random']} of {size['num_random'] + 1} "
                     f"(exact p {_fmt(size[name]['rank_p'])})"
                     for name in COMPARED if name in size]
            lines.append(f"- size: among the random genotypes Dice against log10(params) has Spearman rho "
                         f"{_fmt(size['spearman_rho'], 2)}, slope {_fmt(size['slope_per_decade'])} per tenfold; "
                         "residual to that line (leave-one-out for the random ones): " + "; ".join(parts))
        for a, b in PAIRED:
            c = t.get(f"{a}_vs_{b}")
            if c and c.get("diff") is not None:
                lines.append(f"- {a} vs {b} (paired by seed and case): difference {_fmt(c['diff'])} "
                             f"(90% bootstrap interval {_fmt(c['low'])} .. {_fmt(c['high'])}), "
                             f"one-sided p {_fmt(c['p'])}")
        classes = summary.get("classes", {}).get(task)
        if classes:
            lines += ["", *class_table(classes)]
        lines.append("")
    for name, b in (summary.get("pooled") or {}).items():
        if b.get("tasks"):
            lines.append(f"Pooled over {b['tasks']} task(s), {name} vs random median: difference {_fmt(b['diff'])} "
                         f"(90% bootstrap interval {_fmt(b['low'])} .. {_fmt(b['high'])}), bootstrap p {_fmt(b['p'])}.")
    lines.append("")
    prov = summary.get("searched_provenance") or {}
    if prov:
        lines.append(f"The search's own scores of its winner, on its selection cases (fold 0 validation): "
                     f"coarse {_fmt(prov.get('coarse_score'))} (topology, all cells 3d, trained alone), "
                     f"fine {_fmt(prov.get('fine_score'))} (supernet shared weights).")
        lines.append("")
    taus = summary.get("search_kendall_taus") or {}
    lines.append("Search report Kendall taus: " + (", ".join(f"`{k}` = {_fmt(v)}" for k, v in taus.items())
                                                   if taus else "none in the search report"))
    return "\n".join(lines) + "\n"


def _cmp(c: dict[str, Any] | None) -> str:
    if not c or c.get("diff") is None:
        return "n/a"
    return f"{_fmt(c['diff'])} [{_fmt(c['low'])}, {_fmt(c['high'])}] p {_fmt(c['p'])}"


def class_table(classes: dict[str, dict[str, Any]]) -> list[str]:
    """Per class: the main arms' mean Dice, the random median, and the comparisons (difference,
    90% bootstrap interval, one-sided p)."""
    lines = ["Per class (mean Dice over seeds and held-out cases where the class is scored; comparisons: "
             "difference [90% interval] one-sided p):", "",
             "| class | searched | reference | searched_3d | nnunet | random median (N) | searched - random median "
             "| rank p | searched - reference | searched - searched_3d | searched - nnunet | reference - nnunet |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, t in classes.items():
        arm = lambda a, t=t: _fmt(t["arms"][a]["score"]) if a in t.get("arms", {}) else "n/a"  # noqa: E731
        vs = t.get("searched_vs_random_median") or {}
        lines.append(f"| {name} | {arm('searched')} | {arm('reference')} | {arm('searched_3d')} | {arm('nnunet')} | "
                     f"{_fmt(t.get('random_median'))} ({t.get('num_random', 0)}) | {_cmp(vs.get('bootstrap'))} | "
                     f"{_fmt(vs.get('rank_p'))} | {_cmp(t.get('searched_vs_reference'))} | "
                     f"{_cmp(t.get('searched_vs_searched_3d'))} | {_cmp(t.get('searched_vs_nnunet'))} | "
                     f"{_cmp(t.get('reference_vs_nnunet'))} |")
    return lines


def boxplot(records: list[dict[str, Any]], tasks: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_arms = max([len({r["arm"] for r in records if r["task"] == t}) for t in tasks] + [1])
    fig, axes = plt.subplots(1, len(tasks), figsize=(max(5.5, 0.32 * n_arms) * len(tasks), 4.5), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        mats, seeds, _ = matrices(records, task)
        names = [a for a in ("searched", "searched_3d", "reference", "nnunet") if a in mats]
        names += sorted(a for a in mats if a not in names and "@" not in a)
        names += sorted(a for a in mats if "@" in a)
        data = [mats[a][np.isfinite(mats[a])] for a in names]
        if not names:
            ax.set_title(f"{task}: no results yet")
            continue
        box = ax.boxplot(data, patch_artist=True, widths=0.6)
        for patch, a in zip(box["boxes"], names):
            patch.set_facecolor(ARM_COLOURS.get(a.split("@")[0], "lightgrey"))
            if "@" in a:  # the other cell style
                patch.set_hatch("//")
        for i, a in enumerate(names, start=1):  # one dot per seed: its mean over cases
            ax.scatter([i] * len(seeds), stats.seed_scores(mats[a]), color="black", s=12, zorder=3)
        ax.set_xticks(range(1, len(names) + 1))
        ax.set_xticklabels(names, rotation=60, ha="right", fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_ylabel("held-out Dice (per case; dots: seed means)")
        ax.set_title(f"{task} ({len(seeds)} seed(s))")
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def class_plot(summary: dict[str, Any], path: Path) -> None:
    """One panel per task and class: every random genotype's mean over seeds (grey, its
    median as a line) beside the named arms (mean, bar from the lowest to the highest seed):
    where the searched genotype falls among chance, class by class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(t, c, v) for t, classes in summary.get("classes", {}).items() for c, v in classes.items()]
    cols = max(1, min(4, len(panels)))
    rows = max(1, math.ceil(len(panels) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (task, label, cls) in zip(axes.flat, panels):
        arms = cls.get("arms", {})
        randoms = [v["mean"] for a, v in arms.items() if a.startswith("random_") and v.get("mean") is not None]
        ax.scatter(np.zeros(len(randoms)) + np.linspace(-0.15, 0.15, len(randoms)), randoms, color="grey", s=10)
        if randoms:
            ax.hlines(float(np.median(randoms)), -0.3, 0.3, color="black", lw=1.5)
        names = [a for a in ARM_COLOURS if a in arms and arms[a].get("mean") is not None]
        for x, a in enumerate(names, start=1):
            v = arms[a]
            ax.errorbar([x], [v["mean"]], yerr=[[v["mean"] - v["min"]], [v["max"] - v["mean"]]], fmt="o",
                        color=ARM_COLOURS[a], capsize=3)
        ax.set_xticks(range(len(names) + 1))
        ax.set_xticklabels([f"random ({len(randoms)})"] + names, rotation=45, ha="right", fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_title(f"{task}: {label} ({len(cls.get('seeds', []))} seed(s))", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("held-out Dice (mean over seeds)")
    fig.tight_layout()
    save_figure(fig, path)


def size_plot(summary: dict[str, Any], path: Path) -> None:
    """Per task: mean Dice over seeds against parameter count (log scale), the random
    genotypes grey with their least-squares line in log10(params), the named arms in colour:
    is the searched genotype better than chance, or better than chance of its size?"""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    tasks = list(summary.get("tasks", {}))
    fig, axes = plt.subplots(1, max(1, len(tasks)), figsize=(4.2 * max(1, len(tasks)), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        t = summary["tasks"][task]
        arms = {a: v for a, v in t.get("arms", {}).items() if v.get("params") and v.get("mean") is not None}
        rand = {a: v for a, v in arms.items() if a.startswith("random_")}
        ax.scatter([v["params"] for v in rand.values()], [v["mean"] for v in rand.values()], color="grey", s=14,
                   label=f"random ({len(rand)})")
        size = t.get("size") or {}
        if size.get("intercept") is not None and rand:  # the line size_adjusted fitted
            x = np.log10([v["params"] for v in rand.values()])
            xs = np.linspace(x.min(), x.max(), 20)
            ax.plot(10 ** xs, size["intercept"] + size["slope_per_decade"] * xs, color="grey", lw=1)
        for name, c in ARM_COLOURS.items():
            if name in arms:
                ax.scatter([arms[name]["params"]], [arms[name]["mean"]], color=c, s=30, label=name, zorder=3)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # no crowded minor labels
        ax.set_xlabel("parameters")
        ax.set_title(f"{task} ({len(t.get('seeds', []))} seed(s); rho {_fmt(size.get('spearman_rho'), 2)})", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("held-out mean foreground Dice")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def write_summary(store: ResultStore, out: Path, profile: StudyProfile) -> dict[str, Any]:
    from benchmarks.study.runner import read_search_report

    records = store.records
    tasks = [t.key for t in profile.tasks]
    report = read_search_report(out)
    meta = store.data.get("meta", {})
    summary = {"profile": profile.name, "trainings": len(records), "budget": meta.get("budget", {}),
               "task_info": meta.get("tasks", {}), "arms": meta.get("arms", {}),
               "tasks": {t: task_summary(records, t, profile.n_boot) for t in tasks},
               "classes": {t: class_summaries(records, t, profile.n_boot,
                                              meta.get("tasks", {}).get(t, {}).get("labels", {}))
                           for t in tasks},
               "pooled": pooled(records, tasks, profile.n_boot),
               "search_kendall_taus": find_taus(report) if report else {},
               "search_seconds": meta.get("search_seconds"), "search_cpu_seconds": meta.get("search_cpu_seconds"),
               "searched_provenance": _provenance(out),
               "train_seconds_total": round(sum(r["scores"].get("train_seconds", 0.0) for r in records
                                                if "reused_from" not in r["scores"]), 1),
               "loadavg_1min_range": _load_range(records)}
    atomic_write_json(out / SUMMARY_JSON, summary)
    atomic_write_text(out / SUMMARY_MD, markdown(summary))
    boxplot(records, tasks, out / BOXPLOT)
    class_plot(summary, out / CLASS_PLOT)
    size_plot(summary, out / SIZE_PLOT)
    return summary


def _provenance(out: Path) -> dict[str, Any]:
    from benchmarks.study.runner import SEARCHED_FILE
    from c2fnas_auto.utils.io import load_json

    path = out / SEARCHED_FILE
    if not path.is_file():
        return {}
    d = load_json(path, "searched genotype")
    prov = d.get("provenance", {}) if isinstance(d, dict) else {}
    return {k: prov.get(k) for k in ("fine_score", "coarse_score")}


def _load_range(records: list[dict[str, Any]]) -> list[float] | None:
    loads = [v for r in records for v in r["scores"].get("loadavg_1min", [])]
    return [min(loads), max(loads)] if loads else None
