"""c2fnas_find_best_configuration -t TASK: pick the best trained experiment (or ensemble) by cross-validation."""

from __future__ import annotations

import argparse
import math

from c2fnas_auto import paths
from c2fnas_auto.cli._common import cli_entry, exit_with
from c2fnas_auto.deployment.errors import DeploymentError
from c2fnas_auto.errors import C2FNASError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="c2fnas_find_best_configuration", description=(
        "Compare the trained experiments of a task (e.g. the searched and the reference genotype, each over "
        "all folds) by pooled cross-validation Dice, score their ensembles from the saved validation "
        "probabilities (c2fnas_train --save-probabilities), and write the best one and how to predict with "
        "it to C2FNAS_results/<task>/best_configuration.json."))
    p.add_argument("-t", dest="task", required=True, help="task id or name")
    p.add_argument("--experiments", nargs="+", default=None, metavar="NAME",
                   help="experiment folders to compare (default: every experiment of the task)")
    p.add_argument("--max-ensemble", type=int, default=2,
                   help="largest ensemble to score, 1 = no ensembles (default 2)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    return p


def _fmt(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.4f}"


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # start-up: the library loads only once the arguments are parsed, so --help stays fast
    from c2fnas_auto.deployment.selection import BEST_FILE, find_best_configuration, fold_summaries
    from c2fnas_auto.inference.experiments import list_experiments, task_results_dir

    if args.max_ensemble < 1:
        raise DeploymentError(f"--max-ensemble must be at least 1 (got {args.max_ensemble})")
    task_dir = task_results_dir(args.task)
    found = [e for e in list_experiments(task_dir) if fold_summaries(e)]
    if args.experiments:
        by_name = {e.name: e for e in found}
        unknown = [n for n in args.experiments if n not in by_name]
        if unknown:
            raise DeploymentError(f"{task_dir}: no validated experiment named {', '.join(unknown)} "
                                  f"(found: {', '.join(by_name) or 'none'})")
        found = [by_name[n] for n in args.experiments]
    labels, reference = _labels_and_reference(task_dir.name, found)
    decision = find_best_configuration(task_dir.name, found, reference, labels, task_dir / BEST_FILE,
                                       max_ensemble=args.max_ensemble, progress=not args.no_progress)
    print(f"folds {', '.join(decision['folds'])}; pooled cross-validation foreground Dice:")
    for c in decision["candidates"]:
        print(f"  {_fmt(c['dice'])}  NSD {_fmt(c['nsd'])}  {c['name']} ({c['n_cases']} cases)")
    for line in decision["ensembles_skipped"]:
        print(f"  skipped {line}")
    print(f"best: {decision['best']['name']} -> {task_dir / BEST_FILE}")
    print(f"predict with: {decision['predict_command']}")
    return 0


def _labels_and_reference(task_name: str, experiments):
    """Labels from the first experiment's fold checkpoint plans; reference labels from the raw task
    (None on a machine without it: ensembles are then not scored)."""
    # start-up: the library loads only once the arguments are parsed, so --help stays fast
    from c2fnas_auto.deployment.selection import validation_cases
    from c2fnas_auto.training.validation import reference_label_folder
    from c2fnas_auto.utils.io import load_json

    if not experiments:
        return {}, None
    summary = next(iter(sorted(experiments[0].glob("fold_*/validation/summary.json"))))
    labels = {str(k): int(v) for k, v in load_json(summary, "validation summary")["labels"].items()}
    try:
        fold = summary.parent.parent.name[len("fold_"):]
        reference = reference_label_folder(paths.resolve_task(task_name), validation_cases(experiments[0], fold))
    except C2FNASError:
        reference = None
    return labels, reference


if __name__ == "__main__":
    exit_with(main)
