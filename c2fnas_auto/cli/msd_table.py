"""c2fnas_msd_table: one Dice / NSD table over every task's cross-validation results."""

from __future__ import annotations

import argparse
from pathlib import Path

from c2fnas_auto.cli._common import cli_entry, exit_with
from c2fnas_auto.errors import InputError
from c2fnas_auto.paths import results_root


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="c2fnas_msd_table", description=__doc__)
    p.add_argument("--results", help="results root (default: $C2FNAS_results)")
    p.add_argument("-o", dest="out_prefix", help="output prefix: writes PREFIX.md and PREFIX.json "
                   "(default RESULTS/msd_table)")
    p.add_argument("--num-folds", type=int, default=5, help="folds expected per task (default 5)")
    return p


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # start-up: the library loads only once the arguments are parsed, so --help stays fast
    from c2fnas_auto.evaluation.msd_table import write_msd_table

    if args.results:
        root = Path(args.results)
    else:
        root = results_root()
    if not root.is_dir():
        raise InputError(f"{root}: results folder not found")
    prefix = Path(args.out_prefix) if args.out_prefix else root / "msd_table"
    results, md = write_msd_table(root, prefix, args.num_folds)
    print(md, end="")
    print(f"written {prefix}.md and {prefix}.json ({len(results)} task(s))")
    return 0


if __name__ == "__main__":
    exit_with(main)
