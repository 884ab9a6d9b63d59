"""Row 7: is the searched genotype better than chance, on cases the search never saw?

The row is the search study (benchmarks/search_study.py, documentation/studies/search_study.md)
at the benchmark's profile: quick and full resume the committed study results under
benchmarks/results/search_study/<profile> (a finished study costs seconds; a missing
one is run, resumably); tiny runs the toy study in the scratch workspace. No score here
comes from the cases that selected the searched genotype: every Dice is measured on the
source task's imagesTs/labelsTs, which the search never reads.
"""

from __future__ import annotations

from benchmarks.common import Profile, RowResult, Summary, require_our
from benchmarks.workspace import Workspace

ROW = "search_quality"
TITLE = "7. Search quality"


def run(ws: Workspace, profile: Profile) -> RowResult:
    require_our("c2fnas_auto.training.api")
    from benchmarks.search_study import RESULTS_ROOT
    from benchmarks.study.profiles import PROFILES
    from benchmarks.study.report import SUMMARY_JSON
    from benchmarks.study.runner import run_study
    from c2fnas_auto.utils.io import load_json

    study = PROFILES[profile.name]
    out = ws.sub("search_study_results") if profile.name == "tiny" else RESULTS_ROOT / profile.name
    run_study(study, ws.sub("search_study"), out, progress=False)
    summary = load_json(out / SUMMARY_JSON, "search study summary")
    src = summary["tasks"][study.source.key]
    cmp = src.get("searched_vs_random_median") or {}
    boot = cmp.get("bootstrap") or {}
    arms = src.get("arms", {})
    ours = arms.get("searched", {}).get("mean")
    median = src.get("random_median")
    p = boot.get("p")
    return RowResult(
        row=ROW, title=TITLE,
        note=(f"search study `{study.name}`: {src.get('num_random')} random valid genotypes, seeds {src.get('seeds')}, "
              f"{summary['budget'].get('epochs')} x {summary['budget'].get('iters_per_epoch')} iterations each, "
              f"mean foreground Dice on {src.get('cases')} held-out cases of the source task (never seen by the "
              f"search); transfer tasks in documentation/studies/search_study.md"),
        summary=Summary(ours=f"Dice {ours:.3f}, rank {cmp.get('rank_among_random')} of {src.get('num_random', 0) + 1}"
                        if ours is not None else "n/a",
                        peer=f"random median {median:.3f}" if median is not None else "n/a",
                        ratio=(ours / median) if ours is not None and median else None,
                        goal="searched beats the random median on held-out cases (bootstrap p < 0.05)",
                        met=(p is not None and p < 0.05)),
        details={"summary": summary, "results_dir": str(out)},
    )
