"""c2fnas_predict: segment a folder of new images with trained folds."""

from __future__ import annotations

import argparse
import sys

from c2fnas_auto.cli._common import cli_entry, exit_with


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="c2fnas_predict", description=__doc__)
    p.add_argument("-i", dest="input", required=True, help="input folder (MSD 4D files or nnU-Net CASE_0000 files)")
    p.add_argument("-o", dest="output", required=True, help="output folder (not inside the input folder)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("-t", dest="task", help="task id or name (uses C2FNAS_results/<task>/<plans>)")
    src.add_argument("-m", dest="model_folder", help="results folder holding fold_k/ subfolders")
    p.add_argument("-f", dest="folds", nargs="+", default=None, help="folds to ensemble (default: every trained fold)")
    p.add_argument("-p", dest="plans_name", default="C2FNASPlans", help="plans name (default C2FNASPlans)")
    p.add_argument("--checkpoint", choices=("final", "best", "latest"), default="final")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--disable-tta", action="store_true", help="no mirroring test-time augmentation (8x faster)")
    p.add_argument("--step-size", type=float, default=0.5, help="sliding-window step as a fraction of the patch")
    p.add_argument("--save-probabilities", action="store_true", help="also write <case>.npz + <case>.json")
    p.add_argument("--continue", dest="continue_", action="store_true", help="skip cases already predicted")
    p.add_argument("-np", dest="num_export_workers", type=int, default=1, help="export worker processes")
    p.add_argument("--no-postprocessing", action="store_true", help="ignore postprocessing.json")
    p.add_argument("--file-ending", default=".nii.gz")
    p.add_argument("--tile-batch-size", type=int, default=2,
                   help="sliding-window tiles per forward pass (default 2: on a CPU, PyTorch runs single-sample 3D convolutions through a much slower kernel)")
    return p


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from c2fnas_auto.inference.predictor import predict_folder

    failures = predict_folder(args.input, args.output, task=args.task, model_folder=args.model_folder,
                              folds=args.folds, checkpoint=args.checkpoint, device=args.device,
                              tta=not args.disable_tta, step_size=args.step_size,
                              save_probabilities=args.save_probabilities, continue_=args.continue_,
                              num_export_workers=args.num_export_workers,
                              postprocessing=not args.no_postprocessing, file_ending=args.file_ending,
                              plans_name=args.plans_name, tile_batch_size=args.tile_batch_size)
    if failures:
        print(f"{len(failures)} case(s) failed: {', '.join(c for c, _ in failures)}", file=sys.stderr)
        return 1
    print(f"predictions written to {args.output}")
    return 0


if __name__ == "__main__":
    exit_with(main)
