"""`python -m benchmarks.search_study --quick|--full|--power [--workdir DIR] [--out DIR] [--shard K/N]`.

Search on a synthetic source task, then train the searched genotype, the shipped
reference, the searched topology with all cells 3d and N random valid genotypes with
the same budget and several seeds, and score each on held-out cases of the source task
and of two transfer tasks (documentation/studies/search_study.md). Resumable: rerun the same
command and it continues where a stopped run left off. `--power` first needs its
budget: `--power --calibrate 5x20 10x40 20x40` trains the reference at each budget and writes
budget.json; `--shard K/N` splits the trainings over N processes (shard 0 runs the search
first; start the others once searched_genotype.json exists).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from c2fnas_auto.cli._common import cli_entry

RESULTS_ROOT = Path(__file__).resolve().parent / "results" / "search_study"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.search_study", description=__doc__.split("\n\n")[1])
    size = p.add_mutually_exclusive_group(required=True)
    for name in ("tiny", "quick", "full", "power"):
        size.add_argument(f"--{name}", dest="profile", action="store_const", const=name,
                          help={"tiny": "toy sizes for the smoke test", "quick": "under 15 minutes on 2 CPU cores",
                                "full": "under 2 hours on 2 CPU cores",
                                "power": "19 random genotypes, 5/3 seeds, nnU-Net arm: about 10 CPU-hours, "
                                         "resumable across sessions (needs nnunetv2)"}[name])
    size.add_argument("--budget-study", dest="profile", action="store_const", const="budget",
                      help="the budget study (documentation/studies/search_budget_study.md): 4 searches under a "
                           "cost budget, arms scaled to it, about 14 CPU-hours (needs nnunetv2)")
    size.add_argument("--budget-smoke", dest="profile", action="store_const", const="budget_smoke",
                      help="the budget study at toy sizes: a minute or two, checks the whole flow")
    p.add_argument("--workdir", type=Path, default=None,
                   help="raw/preprocessed/search data (default benchmarks/work/search_study/<profile>)")
    p.add_argument("--out", type=Path, default=None,
                   help="results, summary and plots (default benchmarks/results/search_study/<profile>)")
    p.add_argument("--summary-only", action="store_true", help="only rewrite summary and plot from stored results")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (default: torch's own choice; 1 suits a machine shared with other jobs)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    p.add_argument("--shard", default="0/1", metavar="K/N",
                   help="run every N-th training starting at K, in its own results file (parallel processes)")
    p.add_argument("--calibrate", nargs="+", default=None, metavar="EPOCHSxITERS",
                   help="instead of the study: train the reference at these budgets on the source task and write "
                        "budget.json (the smallest budget whose held-out lesion Dice reaches 0.3)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per budget for --calibrate (default 3)")
    p.add_argument("--search-only", action="store_true",
                   help="prepare the tasks and run (or finish) the search, then stop before any training")
    return p


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from benchmarks.study.args import parse_pair, parse_shard
    from benchmarks.study.profiles import PROFILES
    from benchmarks.study.runner import run_study, summarise_only

    from c2fnas_auto.errors import InputError

    shard = parse_shard(args.shard)
    if args.profile.startswith("budget"):
        return _budget_main(args, shard)
    profile = PROFILES[args.profile]
    budgets = [parse_pair(b, "--calibrate", "x") for b in args.calibrate or []]
    if any(e < 1 or i < 1 for e, i in budgets):
        raise InputError(f"--calibrate {' '.join(args.calibrate)}: epochs and iterations must be at least 1")
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    out = args.out or RESULTS_ROOT / profile.name
    workdir = args.workdir or Path(__file__).resolve().parent / "work" / "search_study" / profile.name
    if budgets:
        import json

        from benchmarks.study.runner import calibrate_budget

        summary = calibrate_budget(profile, workdir, out, budgets, args.seeds, shard, progress=not args.no_progress)
        print(json.dumps({k: {kk: v[kk] for kk in v if kk.endswith("_dice") or kk == "train_seconds_mean"}
                          for k, v in summary["budgets"].items()}, indent=1))
        print(f"chosen: {summary['chosen']}")
        return 0
    if args.summary_only:
        summarise_only(profile, out)
    else:
        run_study(profile, workdir, out, progress=not args.no_progress, shard=shard, search_only=args.search_only)
        if args.search_only:
            print(f"search finished: {Path(out) / 'searched_genotype.json'}")
            return 0
    print((Path(out) / "summary.md").read_text(encoding="utf-8"))
    return 0


def _budget_main(args: argparse.Namespace, shard: tuple[int, int]) -> int:
    from benchmarks.study.budget_report import SUMMARY_MD, write_budget_summary
    from benchmarks.study.budget_study import BUDGET_PROFILES, run_budget_study
    from benchmarks.study.runner import load_store

    from c2fnas_auto.errors import InputError

    if args.calibrate:
        raise InputError("--calibrate: the budget study trains at the power study's calibrated budget")
    profile = BUDGET_PROFILES[args.profile]
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    out = Path(args.out or RESULTS_ROOT / profile.name).resolve()
    workdir = args.workdir or Path(__file__).resolve().parent / "work" / "search_study" / profile.name
    if args.summary_only:
        if not any(out.glob("results*.json")):
            raise InputError(f"{out}: no results*.json yet (run the study first)")
        write_budget_summary(load_store(out, profile.name), out, profile)
    else:
        run_budget_study(profile, workdir, out, progress=not args.no_progress, shard=shard,
                         search_only=args.search_only)
        if args.search_only:
            print(f"searches finished: {out}")
            return 0
    print((out / SUMMARY_MD).read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
