"""nnU-Net v2's own trainer with its defaults except the schedule's length (run as a module).

`python -m benchmarks.h2h.nnunet_train DATASET_ID --plans NAME --epochs E --iters I --seed S`
trains fold 0 of `3d_fullres` on the CPU and then, unless `--no-final-validation`, runs
nnU-Net's own final validation, as `nnUNetv2_train` does. The subclass is named
`nnUNetTrainer` on purpose: the checkpoint records that name, so `nnUNetv2_predict -tr nnUNetTrainer` and
`nnUNetv2_find_best_configuration` rebuild the network through nnU-Net's own class; only
`num_epochs`, `num_iterations_per_epoch` and `num_val_iterations_per_epoch` (kept at nnU-Net's
5:1 ratio of training to validation iterations) differ, so its poly schedule spans the budget.
"""

from __future__ import annotations

import argparse
import random


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="nnunet_train")
    p.add_argument("dataset_id")
    p.add_argument("--plans", required=True)
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--iters", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--no-final-validation", action="store_true", help="skip nnU-Net's validation of the fold")
    args = p.parse_args(argv)
    if args.epochs < 1 or args.iters < 1:
        p.error("--epochs and --iters must be at least 1")

    import numpy as np
    import torch
    from batchgenerators.utilities.file_and_folder_operations import join, load_json
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer as Base
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    class nnUNetTrainer(Base):  # noqa: N801 - the name nnU-Net's tools look up
        def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                     device: torch.device = torch.device("cpu")):  # nnU-Net records these names
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.num_epochs = args.epochs
            self.num_iterations_per_epoch = args.iters
            self.num_val_iterations_per_epoch = max(1, args.iters // 5)

    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    folder = join(nnUNet_preprocessed, maybe_convert_to_dataset_name(int(args.dataset_id)))
    plans = load_json(join(folder, f"{args.plans}.json"))
    plans["continue_training"] = False  # as nnU-Net's get_trainer_from_args sets it for a fresh run
    trainer = nnUNetTrainer(plans=plans, configuration="3d_fullres",
                            fold=args.fold, dataset_json=load_json(join(folder, "dataset.json")),
                            device=torch.device("cpu"))
    trainer.run_training()
    if not args.no_final_validation:
        trainer.perform_actual_validation(False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
