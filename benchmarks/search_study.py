"""`python -m benchmarks.search_study --quick|--full [--workdir DIR] [--out DIR]`.

Search on a synthetic source task, then train the searched genotype, the shipped
reference, the searched topology with all cells 3d and N random valid genotypes with
the same budget and several seeds, and score each on held-out cases of the source task
and of two transfer tasks (documentation/search_study.md). Resumable: rerun the same
command and it continues where a stopped run left off.
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
    for name in ("tiny", "quick", "full"):
        size.add_argument(f"--{name}", dest="profile", action="store_const", const=name,
                          help={"tiny": "toy sizes for the smoke test", "quick": "under 15 minutes on 2 CPU cores",
                                "full": "under 2 hours on 2 CPU cores"}[name])
    p.add_argument("--workdir", type=Path, default=None,
                   help="raw/preprocessed/search data (default benchmarks/work/search_study/<profile>)")
    p.add_argument("--out", type=Path, default=None,
                   help="results, summary and plots (default benchmarks/results/search_study/<profile>)")
    p.add_argument("--summary-only", action="store_true", help="only rewrite summary and plot from stored results")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (default: torch's own choice; 1 suits a machine shared with other jobs)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    return p


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from benchmarks.study.profiles import PROFILES
    from benchmarks.study.runner import run_study, summarise_only

    profile = PROFILES[args.profile]
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    out = args.out or RESULTS_ROOT / profile.name
    workdir = args.workdir or Path(__file__).resolve().parent / "work" / "search_study" / profile.name
    if args.summary_only:
        summarise_only(profile, out)
    else:
        run_study(profile, workdir, out, progress=not args.no_progress)
    print((Path(out) / "summary.md").read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
