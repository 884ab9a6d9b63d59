"""c2fnas_export_model: share a trained model (zip) or deploy its network (TorchScript, ONNX, MONAI bundle)."""

from __future__ import annotations

import argparse
from pathlib import Path

from c2fnas_auto.cli._common import cli_entry, exit_with

FORMATS = ("torchscript", "onnx", "monai-bundle")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="c2fnas_export_model", description=__doc__)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("-t", dest="task", help="task id or name")
    src.add_argument("-m", dest="model_folder", help="a trained experiment's results folder (holding fold_k/)")
    p.add_argument("-o", dest="output", required=True,
                   help="output: a .ts / .onnx file, or a new folder for --format monai-bundle")
    p.add_argument("--format", choices=FORMATS, required=True, help="what to write")
    p.add_argument("-p", dest="plans_name", default="C2FNASPlans", help="plans name (default C2FNASPlans)")
    p.add_argument("-f", dest="fold", default=None,
                   help="fold whose network to export (default: 'all' if trained, else the first fold)")
    p.add_argument("--checkpoint", choices=("final", "best", "latest"), default="final")
    return p


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from c2fnas_auto.deployment.trained import experiment_folder, load_trained_fold

    folder = experiment_folder(args.task, args.model_folder, args.plans_name)
    trained = load_trained_fold(folder, args.fold, args.checkpoint)
    out = Path(args.output)
    if args.format == "monai-bundle":
        from c2fnas_auto.deployment.monai_bundle import write_bundle

        check = write_bundle(trained.network, trained.plans, trained.genotype, trained.source(), out)
    else:
        from c2fnas_auto.deployment.network_files import export_network_file

        check = export_network_file(trained, args.format, out)
    print(f"fold {trained.fold} of {folder.name} -> {out} ({args.format}); check on a random "
          f"{check.output_shape[2:]} patch: max |difference| {check.max_abs_difference:.2e} <= tolerance "
          f"{check.tolerance:.2e}")
    return 0


if __name__ == "__main__":
    exit_with(main)
