"""c2fnas_train TASK FOLD: train the plans' genotype on one fold (nnU-Net style).

Runnable as `python -m c2fnas_auto.cli.train` so torchrun can launch it:
`torchrun --nproc_per_node=N -m c2fnas_auto.cli.train TASK FOLD ...`.
"""

from __future__ import annotations

import argparse

from c2fnas_auto.cli._common import add_trust_flag, cli_entry, exit_with, trust_from_args
from c2fnas_auto.cli._execution import add_execution_flags, settings_from_args
from c2fnas_auto.training.dataloader import AUGMENTATION_BACKENDS, FOREGROUND_CLASS_RULES
from c2fnas_auto.training.signals import TrainingStopped
from c2fnas_auto.training.trainer import Trainer, TrainerOptions, default_num_workers
from c2fnas_auto.utils.stop_signals import STOPPED_EXIT_CODE


def build_parser() -> argparse.ArgumentParser:
    d = TrainerOptions()
    p = argparse.ArgumentParser(prog="c2fnas_train", description=(
        "Train the network of the plans' genotype on one cross-validation fold. Results go to "
        "$C2FNAS_results/<task>/<plans>__<genotype id>/fold_<k>/ (one folder per genotype). Several GPUs: "
        "torchrun --nproc_per_node=N -m c2fnas_auto.cli.train TASK FOLD ... On SIGTERM or SIGUSR1 the running "
        "iteration finishes, checkpoint_latest.pth is written and the exit code is 3; --continue resumes."))
    p.add_argument("task", help="task id (7, 007) or preprocessed folder name (Task07_Pancreas)")
    p.add_argument("fold", help="fold 0-4 (as many folds as cases when there are fewer than 5) or 'all'")
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"number of epochs (default {d.epochs})")
    p.add_argument("--iters-per-epoch", type=int, default=d.iters_per_epoch,
                   help=f"training iterations per epoch (default {d.iters_per_epoch})")
    p.add_argument("--val-iters", type=int, default=d.val_iters,
                   help=f"validation patches batches per epoch for the pseudo Dice (default {d.val_iters})")
    p.add_argument("--batch-size", type=int, default=None, help="global batch size (default: the plans')")
    p.add_argument("--patch-size", type=int, nargs=3, metavar=("Z", "Y", "X"), default=None,
                   help="patch size in preprocessed axis order (default: the plans')")
    p.add_argument("--device", choices=("cuda", "cpu"), default=None,
                   help="device (default: cuda when available, else cpu)")
    p.add_argument("--num-workers", type=int, default=None,
                   help=f"augmentation worker processes, 0 = in-process (default {default_num_workers()})")
    p.add_argument("--augmentation", choices=AUGMENTATION_BACKENDS, default=None,
                   help="augmentation backend: 'device' runs batched torch transforms on the training device "
                        "after the copy, 'batchgenerators' runs them in the loader workers (default: device; "
                        "see documentation/howto/training.md)")
    p.add_argument("--foreground-classes", choices=FOREGROUND_CLASS_RULES, default=d.foreground_classes,
                   help="class a forced-foreground patch is centred on: 'uniform' over the case's classes "
                        "(nnU-Net) or 'rarest' in the case (small lesions inside organs) "
                        f"(default {d.foreground_classes})")
    p.add_argument("--deep-supervision", choices=("on", "off"), default=None,
                   help="loss on the decoder's coarser outputs too (default: the plans' network.deep_supervision)")
    p.add_argument("--genotype", dest="genotype_file", default=None, metavar="FILE",
                   help="genotype JSON (or a plans file holding one) instead of the plans' genotype; trains "
                   "into that genotype's own experiment folder, its memory checked against the plans' budget")
    p.add_argument("--continue", dest="continue_training", action="store_true",
                   help="resume from checkpoint_latest.pth (clean start if there is none)")
    p.add_argument("--seed", type=int, default=d.seed, help=f"random seed (default {d.seed})")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every,
                   help=f"write checkpoint_latest.pth every N epochs (default {d.checkpoint_every})")
    p.add_argument("--no-final-validation", dest="final_validation", action="store_false",
                   help="skip the sliding-window validation of the fold's cases at the end")
    p.add_argument("--save-probabilities", action="store_true",
                   help="keep the final validation's softmax (validation/<case>.npz): "
                        "c2fnas_find_best_configuration scores ensembles from it (nnU-Net's --npz)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no tqdm progress bars")
    add_execution_flags(p)
    add_trust_flag(p)
    return p


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    options = settings_from_args(
        TrainerOptions, args, patch_size=tuple(args.patch_size) if args.patch_size else None,
        num_workers=default_num_workers() if args.num_workers is None else args.num_workers,
        deep_supervision=None if args.deep_supervision is None else args.deep_supervision == "on")
    with trust_from_args(args):  # --continue from an older checkpoint_latest; new ones are plain data
        trainer = Trainer(args.task, args.fold, options)
        try:
            trainer.run()
        except TrainingStopped:  # SIGTERM / SIGUSR1: checkpoint written, resume with --continue
            return STOPPED_EXIT_CODE
    if trainer.is_main:
        print(f"results in {trainer.fold_dir}", flush=True)
    return 0


if __name__ == "__main__":
    exit_with(main)
