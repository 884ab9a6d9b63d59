"""c2fnas_make_synthetic_task: write a seeded synthetic CT-like (or MR-like) task for tests and demos."""

from __future__ import annotations

import argparse

from c2fnas_auto.cli._common import cli_entry, exit_with
from c2fnas_auto.data.synthetic import make_synthetic_task


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="c2fnas_make_synthetic_task",
                                description="Write a synthetic organ + lesion segmentation task "
                                            "(MSD or nnU-Net v2 layout) into a raw data folder.")
    p.add_argument("--raw", required=True, help="raw data folder to write into (usually $C2FNAS_raw)")
    p.add_argument("--task-id", type=int, default=98, help="task number (default 98)")
    p.add_argument("--name", default="Synthetic", help="task name (default Synthetic)")
    p.add_argument("--num-train", type=int, default=20, help="training cases (default 20)")
    p.add_argument("--num-test", type=int, default=4, help="test cases, labels in labelsTs/ (default 4)")
    p.add_argument("--shape", type=int, nargs=3, metavar=("Z", "Y", "X"), default=(32, 64, 64),
                   help="voxels per case (default 32 64 64)")
    p.add_argument("--spacing", type=float, nargs=3, metavar=("Z", "Y", "X"), default=(3.0, 1.0, 1.0),
                   help="voxel spacing in mm (default 3 1 1: anisotropic, z coarse)")
    p.add_argument("--layout", choices=("msd", "nnunet"), default="msd", help="folder layout (default msd)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--modality", choices=("CT", "MR"), default="CT", help="intensity model (default CT)")
    p.add_argument("--channels", type=int, default=1, help="channels per case; MSD writes 4D files (default 1)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing task folder of that name")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    folder = make_synthetic_task(args.raw, task_id=args.task_id, name=args.name, num_train=args.num_train,
                                 num_test=args.num_test, shape=tuple(args.shape), spacing=tuple(args.spacing),
                                 seed=args.seed, layout=args.layout, modality=args.modality,
                                 channels=args.channels, overwrite=args.overwrite,
                                 progress=False if args.no_progress else True)
    print(folder)
    return 0


if __name__ == "__main__":
    exit_with(main)
