"""c2fnas_predict: segment a folder of new images with trained folds."""

from __future__ import annotations

import argparse
import sys
from contextlib import ExitStack

from c2fnas_auto.cli._common import add_trust_flag, cli_entry, exit_with, trust_from_args
from c2fnas_auto.cli._execution import add_execution_flags, execution_from_args
from c2fnas_auto.deployment.zip_limits import add_zip_limit_flags, zip_limits_from_args
from c2fnas_auto.errors import InputError
from c2fnas_auto.nas.genotype import Genotype
from c2fnas_auto.preprocessing.resample_bound import add_max_resampled_flag, apply_max_resampled_flag


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="c2fnas_predict", description=__doc__)
    p.add_argument("-i", dest="input", required=True, help="input folder (MSD 4D files or nnU-Net CASE_0000 files)")
    p.add_argument("-o", dest="output", required=True, help="output folder (not inside the input folder)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("-t", dest="task", help="task id or name: uses the plans genotype's experiment "
                     "C2FNAS_results/<task>/<plans>__<genotype id> (see --experiment, --genotype)")
    src.add_argument("-m", dest="model_folders", nargs="+", metavar="FOLDER",
                     help="experiment folder(s) holding fold_k/ subfolders, or model .zip files from "
                          "c2fnas_export_model (used without installing); several = ensemble of experiments")
    p.add_argument("-f", dest="folds", nargs="+", default=None,
                   help="folds to ensemble (default: every trained fold; 'all' = the fold trained on all cases)")
    p.add_argument("-p", dest="plans_name", default="C2FNASPlans", help="plans name (default C2FNASPlans)")
    pick = p.add_mutually_exclusive_group()
    pick.add_argument("--experiment", nargs="+", default=None, metavar="NAME",
                      help="with -t: the experiment folder(s) to use instead of the plans genotype's; "
                           "several = ensemble of experiments (see c2fnas_find_best_configuration)")
    pick.add_argument("--genotype", default=None, metavar="FILE",
                      help="with -t: the experiment trained with this genotype (JSON or plans file)")
    p.add_argument("--checkpoint", choices=("final", "best", "latest"), default="final")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--disable-tta", action="store_true", help="no mirroring test-time augmentation (8x faster)")
    p.add_argument("--step-size", type=float, default=0.5, help="sliding-window step as a fraction of the patch")
    p.add_argument("--save-probabilities", action="store_true", help="also write <case>.npz + <case>.json")
    p.add_argument("--continue", dest="continue_", action="store_true", help="skip cases already predicted")
    p.add_argument("-np", dest="num_export_workers", type=int, default=1, help="export worker processes")
    p.add_argument("--no-postprocessing", action="store_true", help="ignore postprocessing.json")
    p.add_argument("--file-ending", default=".nii.gz")
    p.add_argument("--num-parts", type=int, default=1,
                   help="split the cases over this many jobs (cluster array jobs; default 1)")
    p.add_argument("--part-id", type=int, default=0,
                   help="which part this job predicts, 0..num-parts-1 (every num-parts-th case in name order)")
    p.add_argument("--tile-batch-size", type=int, default=2,
                   help="sliding-window tiles per forward pass (default 2: on a CPU, PyTorch runs single-sample "
                   "3D convolutions through a much slower kernel)")
    add_zip_limit_flags(p)
    add_max_resampled_flag(p)
    add_execution_flags(p)
    add_trust_flag(p)
    return p


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    apply_max_resampled_flag(args)
    # start-up: the library loads only once the arguments are parsed, so --help stays fast
    from c2fnas_auto.inference.experiments import find_experiment
    from c2fnas_auto.inference.predictor import Predictor

    if args.task is None and (args.experiment or args.genotype):
        raise InputError("--experiment and --genotype choose among a task's experiments: use them with -t")
    if args.task is not None:
        genotype = None
        if args.genotype:
            genotype = Genotype.load(args.genotype).validate()
        names = args.experiment or [None]
        folders = [find_experiment(args.task, args.plans_name, genotype=genotype, experiment=n) for n in names]
    else:
        folders = args.model_folders
    with ExitStack() as stack:
        # start-up: the library loads only once the arguments are parsed, so --help stays fast
        from c2fnas_auto.deployment.model_zip import expand_model_zips

        stack.enter_context(trust_from_args(args))
        # a model .zip is read from a temporary folder
        folders = expand_model_zips(folders, stack, zip_limits_from_args(args))
        predictor = Predictor(folders, folds=args.folds, device=args.device, step_size=args.step_size,
                              tta=not args.disable_tta, tile_batch_size=args.tile_batch_size,
                              checkpoint=args.checkpoint, postprocessing=not args.no_postprocessing,
                              execution=execution_from_args(args))
        failures = predictor.predict_files(args.input, args.output, save_probabilities=args.save_probabilities,
                                           continue_=args.continue_, num_export_workers=args.num_export_workers,
                                           file_ending=args.file_ending, num_parts=args.num_parts,
                                           part_id=args.part_id)
    if failures:
        print(f"{len(failures)} case(s) failed: {', '.join(c for c, _ in failures)}", file=sys.stderr)
        return 1
    print(f"predictions written to {args.output}")
    return 0


if __name__ == "__main__":
    exit_with(main)
