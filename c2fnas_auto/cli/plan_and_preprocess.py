"""c2fnas_plan_and_preprocess: fingerprint, plans and preprocessed data for one or more tasks."""

from __future__ import annotations

import argparse
import sys

from c2fnas_auto.cli._common import cli_entry, exit_with
from c2fnas_auto.errors import C2FNASError
from c2fnas_auto.paths import preprocessed_dir
from c2fnas_auto.preprocessing.resample_bound import add_max_resampled_flag, apply_max_resampled_flag
from c2fnas_auto.preprocessing.storage import list_cases


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="c2fnas_plan_and_preprocess",
                                description="Verify a raw task, compute its fingerprint, write plans.json "
                                            "and preprocess the training cases (like nnUNetv2_plan_and_preprocess).")
    p.add_argument("-t", "--task", nargs="+", required=True, help="task id(s) or folder name(s), e.g. -t 7 8")
    p.add_argument("-np", "--num-workers", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--gpu-memory-gb", type=float, default=8.0,
                   help="training memory budget the patch and batch are fitted to (default 8)")
    p.add_argument("--base-channels", type=int, default=None,
                   help="stem width; levels get 2x/4x/8x/16x, capped at 512 (default: 32, as in the paper, "
                        "halved to 16 or 8 at a small --gpu-memory-gb where the network's own weights, gradients "
                        "and momentum would leave the patch under a quarter of the median case)")
    p.add_argument("--cell-style", default="c2fnas", choices=["c2fnas", "residual"],
                   help="cell wiring: 'c2fnas' as the paper's public network (default), or 'residual' cells "
                        "with a full-resolution skip into the classifier (documentation/explanation/search_space.md)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--genotype", metavar="FILE", help="genotype JSON (or a plans file holding one) to deploy")
    g.add_argument("--genotype-from", metavar="TASK",
                   help="use that task's genotype: its plans.json, else its search's "
                   "genotype.json in C2FNAS_results (documentation/reference/plans.md)")
    p.add_argument("--no-preprocess", action="store_true", help="write fingerprint and plans only")
    p.add_argument("--verify-only", action="store_true", help="only check the dataset's integrity")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_max_resampled_flag(p)
    return p


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    apply_max_resampled_flag(args)
    # start-up: the pipeline pulls in SimpleITK, scipy and scikit-image; --help should not wait for them
    from c2fnas_auto.planning.pipeline import load_task, plan_and_preprocess, summary_line
    from c2fnas_auto.planning.planner import memory_target_note

    if args.num_workers < 1:
        raise C2FNASError(f"-np must be >= 1, got {args.num_workers}")
    progress = False if args.no_progress else True
    for task in args.task:
        if args.verify_only:
            ds = load_task(task, verify=True, num_workers=args.num_workers, progress=progress)
            print(f"{ds.folder.name}: {len(ds.training)} training and {len(ds.test)} test cases verified, "
                  "no problems found")
            continue
        plans = plan_and_preprocess(task, gpu_memory_gb=args.gpu_memory_gb, base_channels=args.base_channels,
                                    num_workers=args.num_workers, genotype=args.genotype,
                                    genotype_from=args.genotype_from, preprocess=not args.no_preprocess,
                                    progress=progress, cell_style=args.cell_style)
        n = None if args.no_preprocess else len(list_cases(preprocessed_dir(plans.task_name)))
        print(summary_line(plans, n))
        note = memory_target_note(plans)
        if note is not None:
            print(f"c2fnas_plan_and_preprocess: warning: {note}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    exit_with(main)
