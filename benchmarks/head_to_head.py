"""Head-to-head: nnU-Net v2 against c2fnas-auto, end to end, at equal machine time.

    python -m benchmarks.head_to_head --hippocampus DIR/Task04_Hippocampus

runs every (task, budget, seed, arm) cell not yet in the results folder, in that order, and
regenerates `summary.json` and `head_to_head.png` after each. Both tools plan at the same memory
target and use the same threads, the same held-out test set and the same fold-0 split;
budgets become iteration counts through a per-arm calibration (benchmarks/h2h/calibrate.py).
Protocol and results: documentation/studies/head_to_head.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from benchmarks.common import option_skipped, repo_root
from benchmarks.h2h.calibrate import CALIB_ITERS, calibrate
from benchmarks.h2h.cells import cell_name, is_current, run_cell
from benchmarks.h2h.report import write_report
from benchmarks.h2h.sides import ARMS, Schedule, Settings
from benchmarks.h2h.tasks import HIPPOCAMPUS, SYNTHETIC, prepare_hippocampus, prepare_synthetic
from c2fnas_auto.errors import C2FNASError

DEFAULT_RESULTS = repo_root() / "benchmarks" / "results" / "head_to_head"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="head_to_head", description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", nargs="+", choices=[HIPPOCAMPUS, SYNTHETIC], default=[HIPPOCAMPUS, SYNTHETIC])
    p.add_argument("--arms", nargs="+", choices=sorted(ARMS), default=["nnunet", "ours", "ours_bf16"])
    p.add_argument("--budgets", nargs="+", type=float, default=[20.0, 60.0], metavar="MIN",
                   help="training budgets in machine minutes (default 20 60)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--hippocampus", type=Path, metavar="DIR", help="the MSD Task04_Hippocampus folder")
    p.add_argument("--test-cases", type=int, default=40, help="held-out hippocampus test cases (default 40)")
    p.add_argument("--synthetic-cases", type=int, nargs=2, default=[60, 20], metavar=("TRAIN", "TEST"))
    p.add_argument("--synthetic-shape", type=int, nargs=3, default=[48, 96, 96], metavar=("Z", "Y", "X"))
    p.add_argument("--gpu-memory-gb", type=float, default=0.5, help="memory target of both planners (0.5)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads of both tools (default 2)")
    p.add_argument("--ours-base-channels", type=int, default=None, metavar="N",
                   help="our planner's --base-channels (default: its own: 32, narrowed at small targets); an A/B "
                        "of our network's width at "
                        "the target: cells are not keyed by it, so give it its own --workdir and --results")
    p.add_argument("--final-validation", action="store_true",
                   help="let both trainers validate fold 0 after training (in the budget) and apply the "
                        "postprocessing nnUNetv2_find_best_configuration picks; off by default: on 2 CPU cores "
                        "it costs more than the shorter budgets")
    p.add_argument("--no-mirroring", action="store_true", help="predict without test-time mirroring (both tools)")
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "c2fnas_head_to_head")
    p.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    p.add_argument("--recalibrate", action="store_true", help="time every arm again (e.g. on a quiet machine)")
    p.add_argument("--calibration-iters", type=int, default=CALIB_ITERS)
    p.add_argument("--calibrate-only", action="store_true",
                   help="calibrate the arms (with --recalibrate: again) and run no cell; the cells' results do not "
                        "depend on the load, so they may run later beside other work")
    p.add_argument("--iterations", type=int, default=None,
                   help="fixed iterations per run instead of the calibrated budget (smoke tests)")
    p.add_argument("--max-cells", type=int, default=None, help="stop after running this many new cells")
    p.add_argument("--report-only", action="store_true", help="only regenerate summary.json and the plot")
    return p


def _task(name: str, args, workdir: Path):
    if name == HIPPOCAMPUS:
        if args.hippocampus is None:
            raise C2FNASError("--hippocampus DIR is required for the hippocampus task (MSD Task04_Hippocampus)")
        return prepare_hippocampus(args.hippocampus, workdir, args.test_cases)
    train, test = args.synthetic_cases
    return prepare_synthetic(workdir, train, test, tuple(args.synthetic_shape))


def runnable_arms(arms: list[str]) -> list[str]:
    """The arms worth a cell on this machine: an arm whose option the CPU runs on a reference
    kernel (bf16 without bf16 instructions: 14-32x fp32's time) would spend its whole budget to
    say so, and is left out with the reason."""
    kept = []
    for name in arms:
        why = option_skipped(ARMS[name].execution)
        if why is None:
            kept.append(name)
        else:
            print(f"head_to_head: {name} left out: {why}", flush=True)
    return kept


def run(args) -> int:
    args.arms = runnable_arms(args.arms)
    results = args.results
    results.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        write_report(results)
        return 0
    settings = Settings(args.workdir.resolve(), args.gpu_memory_gb, args.threads, args.final_validation,
                        not args.no_mirroring, args.ours_base_channels)
    ran, recalibrated = 0, set()
    for task_name in args.tasks:
        spec = _task(task_name, args, settings.workdir)
        prepared: dict = {}
        for budget in args.budgets:
            for seed in args.seeds:
                for arm_name in args.arms:
                    if args.max_cells is not None and ran >= args.max_cells:
                        return 0
                    name = cell_name(spec.key, arm_name, budget, seed, settings.mirroring)
                    arm = ARMS[arm_name]
                    redo = args.recalibrate and (spec.key, arm_name) not in recalibrated
                    calibrated = (results / "calibration" / f"{spec.key}__{arm_name}.json").is_file()
                    if (redo or not calibrated) and arm.tool not in prepared:  # calibration trains
                        prepared[arm.tool] = arm.prepare(spec, settings)
                    cal = calibrate(arm, spec, settings, results, args.calibration_iters, redo=redo)
                    recalibrated.add((spec.key, arm_name))
                    if args.calibrate_only:
                        continue
                    if is_current(results / "cells" / f"{name}.json", cal):
                        continue  # done under this calibration
                    if arm.tool not in prepared:
                        prepared[arm.tool] = arm.prepare(spec, settings)
                    fixed = Schedule.for_iterations(args.iterations) if args.iterations else None
                    print(f"head_to_head: {name}: running", flush=True)
                    run_cell(spec, arm, cal, budget, seed, settings, results, prepared[arm.tool], fixed)
                    ran += 1
                    write_report(results)
                    print(f"head_to_head: {name}: done", flush=True)
    write_report(results)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return run(args)
    except C2FNASError as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")


if __name__ == "__main__":
    sys.exit(main())
