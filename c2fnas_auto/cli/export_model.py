"""c2fnas_export_model: share a trained model (zip) or deploy its network (TorchScript, ONNX, MONAI bundle)."""

from __future__ import annotations

import argparse
from pathlib import Path

from c2fnas_auto.cli._common import add_trust_flag, cli_entry, exit_with, trust_from_args
from c2fnas_auto.deployment.errors import DeploymentError

FORMATS = ("zip", "torchscript", "onnx", "monai-bundle")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="c2fnas_export_model", description=(
        "--format zip (default): the task's trained experiments (plans, genotype, dataset.json, fingerprint, "
        "fold checkpoints, postprocessing, README with the CV Dice) in one file for c2fnas_install_model or "
        "c2fnas_predict -m. torchscript / onnx: one fold's network as a file checked against PyTorch at "
        "export. monai-bundle: a MONAI bundle folder of one fold."))
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("-t", dest="task", help="task id or name")
    src.add_argument("-m", dest="model_folder", help="a trained experiment's results folder (holding fold_k/)")
    p.add_argument("-o", dest="output", required=True,
                   help="output: model.zip, a .ts / .onnx file, or a new folder for --format monai-bundle")
    p.add_argument("--format", choices=FORMATS, default="zip", help="what to write (default zip)")
    p.add_argument("-p", dest="plans_name", default="C2FNASPlans", help="plans name (default C2FNASPlans)")
    p.add_argument("--experiment", nargs="+", default=None, metavar="NAME",
                   help="with -t: the experiment(s) to export (zip default: every trained experiment of the "
                        "task; other formats: the plans genotype's)")
    p.add_argument("-f", dest="folds", nargs="+", default=None,
                   help="zip: folds to include (default every trained fold); other formats: the one fold to "
                        "export (default 'all' if trained, else the first fold)")
    p.add_argument("--checkpoint", choices=("final", "best", "latest"), default="final")
    add_trust_flag(p)
    return p


def _export_zip(args) -> str:
    # start-up: the library loads only once the arguments are parsed, so --help stays fast
    from c2fnas_auto.deployment.model_zip import export_model_zip
    from c2fnas_auto.deployment.trained import experiment_folder
    from c2fnas_auto.inference.experiments import find_experiment, list_experiments, task_results_dir

    if args.model_folder is not None:
        folders = [experiment_folder(None, args.model_folder, args.plans_name)]
        task_name = folders[0].parent.name
    else:
        task_name = task_results_dir(args.task).name
        folders = ([find_experiment(args.task, args.plans_name, experiment=n) for n in args.experiment]
                   if args.experiment else list_experiments(task_results_dir(args.task)))
    manifest = export_model_zip(task_name, folders, Path(args.output), args.checkpoint, args.folds)
    parts = [f"{e['name']} (folds {', '.join(e['folds'])}, CV Dice "
             f"{'n/a' if e['cv_foreground_dice'] is None else format(e['cv_foreground_dice'], '.4f')})"
             for e in manifest["experiments"]]
    return f"{task_name}: {'; '.join(parts)} -> {args.output}"


def _export_network(args) -> str:
    # start-up: the library loads only once the arguments are parsed, so --help stays fast
    from c2fnas_auto.deployment.trained import experiment_folder, load_trained_fold

    if args.experiment and len(args.experiment) > 1 or args.folds and len(args.folds) > 1:
        raise DeploymentError(f"--format {args.format} exports one network: give one experiment and one fold")
    folder = experiment_folder(args.task, args.model_folder, args.plans_name,
                               args.experiment[0] if args.experiment else None)
    trained = load_trained_fold(folder, args.folds[0] if args.folds else None, args.checkpoint)
    out = Path(args.output)
    if args.format == "monai-bundle":
        # start-up: the library loads only once the arguments are parsed, so --help stays fast
        from c2fnas_auto.deployment.monai_bundle import write_bundle

        check = write_bundle(trained.network, trained.plans, trained.genotype, trained.source(), out)
    else:
        # start-up: the library loads only once the arguments are parsed, so --help stays fast
        from c2fnas_auto.deployment.network_files import export_network_file

        check = export_network_file(trained, args.format, out)
    return (f"fold {trained.fold} of {folder.name} -> {out} ({args.format}); check on a random "
            f"{check.output_shape[2:]} patch: max |difference| {check.max_abs_difference:.2e} <= tolerance "
            f"{check.tolerance:.2e}")


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with trust_from_args(args):  # a zip always gets checkpoints in the current (tensors + plain data) format
        print(_export_zip(args) if args.format == "zip" else _export_network(args))
    return 0


if __name__ == "__main__":
    exit_with(main)
