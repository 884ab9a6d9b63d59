"""c2fnas_evaluate: Dice and normalized surface Dice of predictions against references.

Also decides largest-component postprocessing from trained folds' validation
predictions (`--determine-postprocessing RESULTS_DIR`).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from c2fnas_auto.cli._common import cli_entry, exit_with
from c2fnas_auto.errors import InputError
from c2fnas_auto.paths import resolve_task


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="c2fnas_evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-ref", dest="ref", help="folder of reference segmentations")
    p.add_argument("-pred", dest="pred", help="folder of predicted segmentations (same file names)")
    p.add_argument("-t", dest="task", help="task id or name: labels from its dataset.json")
    p.add_argument("--labels", type=int, nargs="+", help="label values to score (default: from -t, else "
                   "every value found in the references)")
    p.add_argument("--nsd-tolerance", type=float, default=2.0, help="NSD tolerance in mm (default 2)")
    p.add_argument("-o", dest="out", help="summary file (default PRED/summary.json)")
    p.add_argument("-np", dest="num_workers", type=int, default=1)
    p.add_argument("--missing-as-zero", action="store_true",
                   help="a reference case without a prediction scores Dice 0 / NSD 0 and is listed "
                        "(default: it is an error, so a failed prediction cannot raise the mean)")
    p.add_argument("--determine-postprocessing", metavar="RESULTS_DIR",
                   help="decide largest-component postprocessing from RESULTS_DIR/fold_*/validation "
                        "against -ref (default: the task's labelsTr) and write RESULTS_DIR/postprocessing.json")
    p.add_argument("-f", dest="folds", nargs="+", help="with --determine-postprocessing: folds to use (default all)")
    return p


def _task_labels(task: str) -> tuple[dict[str, int], Path | None]:
    # start-up: the library loads only once the arguments are parsed, so --help stays fast
    from c2fnas_auto.data.dataset import load_dataset

    ds = load_dataset(resolve_task(task))
    label_files = [c.label_file for c in ds.training if c.label_file is not None]
    return dict(ds.labels), (label_files[0].parent if label_files else None)


def _fmt(x: float | None) -> str:
    return "  n/a " if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # start-up: the library loads only once the arguments are parsed, so --help stays fast
    from c2fnas_auto.evaluation.evaluate import evaluate_folders, labels_from_references

    labels: dict[str, int] | None = None
    task_ref: Path | None = None
    if args.task is not None:
        labels, task_ref = _task_labels(args.task)
    if args.labels:
        names = {v: k for k, v in (labels or {}).items()}
        labels = {names.get(v, str(v)): v for v in args.labels}

    if args.determine_postprocessing:
        # start-up: the library loads only once the arguments are parsed, so --help stays fast
        from c2fnas_auto.inference.postprocessing import determine_postprocessing

        ref = Path(args.ref) if args.ref else task_ref
        if ref is None:
            raise InputError("--determine-postprocessing needs -ref LABEL_FOLDER or -t TASK")
        if labels is None:
            labels = labels_from_references(ref)
        decision = determine_postprocessing(args.determine_postprocessing, ref, labels, folds=args.folds)
        for key, before in decision["dice_before"].items():
            after = decision["dice_after"][key]
            mark = "keep largest" if int(key) in decision["largest_component_labels"] else "unchanged"
            print(f"label {key}: Dice {_fmt(before)} -> {_fmt(after)}  {mark}")
            small = decision["min_size_candidates"].get(key)
            if small is not None:
                mark = "remove" if key in decision["min_component_size"] else "keep"
                print(f"label {key}: components < {small['voxels']} voxels: Dice {_fmt(small['dice_before'])} -> "
                      f"{_fmt(small['dice_after'])}  {mark}")
        print(f"written {Path(args.determine_postprocessing) / 'postprocessing.json'}")
        return 0

    if not args.ref or not args.pred:
        raise InputError("-ref and -pred are required (or --determine-postprocessing RESULTS_DIR)")
    if labels is None:
        labels = labels_from_references(args.ref)
    out = Path(args.out) if args.out else Path(args.pred) / "summary.json"
    summary = evaluate_folders(args.ref, args.pred, labels, out, nsd_tolerance_mm=args.nsd_tolerance,
                               num_workers=args.num_workers, missing_as_zero=args.missing_as_zero)
    print(f"{'label':<20} {'Dice':>7} {'NSD':>7}  cases")
    for key, m in summary["mean"].items():
        print(f"{m['name'] + ' (' + key + ')':<20} {_fmt(m['Dice']):>7} {_fmt(m['NSD']):>7}  {m['n_cases']}")
    fg = summary["foreground_mean"]
    print(f"{'foreground mean':<20} {_fmt(fg['Dice']):>7} {_fmt(fg['NSD']):>7}")
    if summary["missing_predictions"]:
        print(f"counted as Dice 0 (no prediction): {', '.join(summary['missing_predictions'])}")
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    exit_with(main)
