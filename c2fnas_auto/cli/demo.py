"""c2fnas_demo: the whole framework on a synthetic CT task, on a CPU, in minutes.

The demo is deliberately not a special code path: it calls the same library functions
and command-line entry points a user would, with a small memory budget and narrow widths
chosen through the normal planner. Each step is resumable, so rerunning the demo in the
same work folder skips what is already done.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from c2fnas_auto.cli._common import cli_entry
from c2fnas_auto.errors import C2FNASError
from c2fnas_auto.paths import preprocessed_dir, search_results_dir

TASK_ID = 98
TASK_NAME = "SyntheticDemo"
# Training patch of fold 0: an eighth of the case (the plans' patch is the whole 32x64x64
# case), so an iteration costs about 1/7 and the schedule gets 4x the iterations in less
# time; with forced-foreground patches centred on the rarest class (the lesion, 0.15 % of
# the voxels, inside the organ) the lesion label is learned within the demo's budget.
TRAIN_PATCH = (16, 32, 32)
FOREGROUND_CLASSES = "rarest"
# The demo plans the default `c2fnas` wiring: with its linear classifier head it learns the
# lesion within the demo's budget (seed 0 on a quiet 2-core CPU: 129 s in all, test organ Dice
# 0.980, lesion 0.919), which the ReLU -> bias-free head of the paper's code did not (lesion 0.00).
# 16 epochs, not 12: 12 x 100 iterations left false lesions of 150-315 voxels in one test case.
CELL_STYLE = "c2fnas"
# Iterations per epoch of the tiny search; fewer (a quick check of an installation, say) still run
# every stage of the search and write a winner, picked on less training.
SEARCH_ITERS = 8


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="c2fnas_demo",
        description="Synthetic task -> plan -> tiny search -> train fold 0 -> predict -> evaluate, on CPU in minutes.",
    )
    p.add_argument("--workdir", type=Path, default=Path("c2fnas_demo"),
                   help="folder for raw, preprocessed and results data (default: ./c2fnas_demo)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="device (default: cpu)")
    p.add_argument("--seed", type=int, default=0, help="seed for data, search and training")
    p.add_argument("--epochs", type=int, default=16, help="training epochs of fold 0 (default 16)")
    p.add_argument("--iters-per-epoch", type=int, default=100, help="iterations per training epoch (default 100)")
    p.add_argument("--skip-search", action="store_true", help="train the shipped reference genotype instead")
    p.add_argument("--search-iters-per-epoch", type=int, default=SEARCH_ITERS,
                   help=f"iterations per epoch of the tiny search's candidates and supernet (default {SEARCH_ITERS})")
    p.add_argument("--disable-tta", action="store_true",
                   help="predict the test cases without mirroring (8x fewer forward passes, a slightly lower Dice)")
    return p


def _step(title: str) -> float:
    print(f"\n=== {title}", flush=True)
    return time.perf_counter()


def _check(rc: int, what: str) -> None:
    if rc != 0:
        raise C2FNASError(f"demo step '{what}' failed with exit code {rc}")


@cli_entry
def main(argv: list[str] | None = None) -> int:
    """One function on purpose: the demo's six steps read top to bottom as the walkthrough they are."""
    parser = _parser()
    args = parser.parse_args(argv)
    for flag in ("epochs", "iters_per_epoch", "search_iters_per_epoch"):  # before any step writes a file
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1 (got {getattr(args, flag)})")
    # start-up: the library loads only once the arguments are parsed, so --help stays fast
    from c2fnas_auto.cli import predict as predict_cli
    from c2fnas_auto.cli import search as search_cli
    from c2fnas_auto.cli import train as train_cli
    from c2fnas_auto.data.synthetic import make_synthetic_task
    from c2fnas_auto.evaluation.evaluate import evaluate_folders
    from c2fnas_auto.planning.pipeline import plan_and_preprocess

    work = args.workdir.resolve()
    for var, sub in (("C2FNAS_raw", "raw"), ("C2FNAS_preprocessed", "preprocessed"), ("C2FNAS_results", "results")):
        os.environ[var] = str(work / sub)
    t_start = time.perf_counter()

    t0 = _step("1/6 synthetic CT task")
    existing = sorted((work / "raw").glob(f"Task*{TASK_ID}_{TASK_NAME}/dataset.json"))
    task_dir = existing[0].parent if existing else None
    if task_dir is None:
        task_dir = make_synthetic_task(work / "raw", task_id=TASK_ID, name=TASK_NAME, num_train=16, num_test=4,
                                       shape=(32, 64, 64), spacing=(3.0, 1.0, 1.0), seed=args.seed)
    print(f"{task_dir}  ({time.perf_counter() - t0:.0f} s)")

    t0 = _step("2/6 plan and preprocess")
    plans = plan_and_preprocess(TASK_ID, gpu_memory_gb=0.25, base_channels=8, num_workers=2, cell_style=CELL_STYLE)
    print(f"{plans.network.cell_style} cells, patch {plans.patch_size}, batch {plans.batch_size}, target spacing "
          f"{[round(s, 2) for s in plans.target_spacing]}, estimated memory {plans.estimated_memory_gb:.2f} GB "
          f"({time.perf_counter() - t0:.0f} s)")

    if not args.skip_search:
        t0 = _step("3/6 tiny coarse-to-fine search")
        # no stand-alone check (--standalone-sample 0): one sample gives no Kendall tau and the
        # check never changes the winner; it cost 7 s of a ~150 s demo. No noise check either
        # (--noise-repeats 0): three candidates give no spread to compare, and its repeats never
        # change the winner but would add three trainings
        _check(search_cli.main(["-t", str(TASK_ID), "--coarse-candidates", "3", "--clusters", "3", "--population", "3",
                                "--min-epochs", "1", "--rungs", "2", "--standalone-sample", "0", "--noise-repeats", "0",
                                "--fine-epochs", "1", "--generations", "2",
                                "--iters-per-epoch", str(args.search_iters_per_epoch), "--device", args.device,
                                "--seed", str(args.seed),
                                "--continue"]), "search")
        print(f"({time.perf_counter() - t0:.0f} s)")

    t0 = _step("4/6 train fold 0")
    _check(train_cli.main([str(TASK_ID), "0", "--epochs", str(args.epochs), "--iters-per-epoch",
                           str(args.iters_per_epoch), "--val-iters", "4", "--device", args.device,
                           "--patch-size", *map(str, TRAIN_PATCH), "--foreground-classes", FOREGROUND_CLASSES,
                           "--seed", str(args.seed), "--num-workers", "0", "--continue"]), "train")
    print(f"({time.perf_counter() - t0:.0f} s)")

    t0 = _step("5/6 predict the held-back test cases")
    pred_dir = work / "predictions"
    rc = predict_cli.main(["-i", str(task_dir / "imagesTs"), "-o", str(pred_dir), "-t", str(TASK_ID), "-f", "0",
                           "--device", args.device, *(["--disable-tta"] if args.disable_tta else [])])
    _check(rc, "predict")
    print(f"({time.perf_counter() - t0:.0f} s)")

    t0 = _step("6/6 evaluate")
    # start-up: the library loads only once the arguments are parsed, so --help stays fast
    from c2fnas_auto.inference.experiments import experiment_dir
    from c2fnas_auto.planning.plans import Plans

    plans = Plans.load(preprocessed_dir(task_dir.name) / "plans.json")
    summary = evaluate_folders(task_dir / "labelsTs", pred_dir, plans.labels, work / "test_summary.json")
    _print_table(summary, plans.labels)
    slice_png = _pictures(work, task_dir, pred_dir)
    fold_dir = experiment_dir(task_dir.name, plans.plans_name, plans.genotype) / "fold_0"
    search_dir = search_results_dir(task_dir.name)
    print("\npictures:")
    for png in (fold_dir / "progress.png", search_dir / "search_progress.png", search_dir / "genotype.png", slice_png):
        if png is not None and png.is_file():
            print(f"  {png}")
    print(f"\nDone in {time.perf_counter() - t_start:.0f} s. Results under {work}")
    return 0


def _fmt(value) -> str:
    """Dice cell: NaN / None (class absent from both masks) prints as n/a."""
    return f"{value:12.3f}" if isinstance(value, (int, float)) and value == value else f"{'n/a':>12}"


def _print_table(summary: dict, labels: dict[str, int]) -> None:
    names = {int(v): k for k, v in labels.items() if int(v) != 0}
    print(f"{'case':<24}" + "".join(f"{names[v]:>12}" for v in sorted(names)))
    for case in summary["per_case"]:
        row = "".join(_fmt(case["metrics"].get(str(v), {}).get("Dice")) for v in sorted(names))
        print(f"{case['case_id']:<24}{row}")
    print(f"{'mean Dice':<24}" + "".join(_fmt(summary["mean"][str(v)]["Dice"]) for v in sorted(names)))


def _pictures(work: Path, task_dir: Path, pred_dir: Path) -> Path | None:
    """A slice of image / truth / prediction for the first test case."""
    # start-up: matplotlib costs about 1 s and only the demo's last step draws; Agg is chosen first
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from c2fnas_auto.data.image_io import read_image, read_segmentation
    from c2fnas_auto.utils.io import save_figure

    preds = sorted(pred_dir.glob("*.nii.gz"))
    if not preds:
        return None
    case = preds[0].name[: -len(".nii.gz")]
    img_files = sorted((task_dir / "imagesTs").glob(f"{case}*.nii.gz"))
    img, _ = read_image(img_files[:1])
    ref, _ = read_segmentation(task_dir / "labelsTs" / preds[0].name)
    pred, _ = read_segmentation(preds[0])
    z = int(np.argmax((ref > 0).sum(axis=(1, 2))))
    fig, axes = plt.subplots(1, 3, figsize=(12, 4))
    for ax, arr, title in zip(axes, (img[0, z], ref[z], pred[z]), ("image", "truth", "prediction")):
        ax.imshow(arr, cmap="gray" if title == "image" else "viridis", vmin=None if title == "image" else 0,
                  vmax=None if title == "image" else max(1, int(ref.max())))
        ax.set_title(f"{title} (slice {z})")
        ax.axis("off")
    fig.suptitle(case)
    return save_figure(fig, work / "prediction_slice.png", bbox_inches="tight")


if __name__ == "__main__":
    sys.exit(main())
