"""Row 4: augmented training patches per second, our two backends vs nnU-Net v2's loader.

All read their own preprocessed copy of the same task (row 1's), sample fold 0's training
cases at the same patch and batch size with their full default augmentation, in the
calling process (no worker processes: on a 2-core box workers only hide the cost; the
per-core throughput is what we compare). Ours runs twice: the "device" backend (batched
torch transforms, here on CPU tensors) and the "batchgenerators" backend (the reference).
nnU-Net's loader is the one its trainer builds (`nnUNetTrainer.get_dataloaders`, with
nnUNet_n_proc_DA=0), with deep supervision off so that it does not downsample extra
targets our loader does not make. The three sides take turns within every repetition,
the order rotating, and ratios are taken inside a repetition.
"""

from __future__ import annotations

import os
import time
from typing import Callable

from benchmarks.common import Profile, RowResult, Summary, median, paired_ratio, require_module, require_our

ROW = "data_pipeline"
TITLE = "4. Data pipeline"
BACKENDS = ("device", "batchgenerators")


def patches_per_second(it, batches: int, batch_size: int) -> float:
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch_size / (time.perf_counter() - t0)


def rotate(sides: dict[str, Callable[[], float]], reps: int) -> dict[str, list[float]]:
    """Run every side once per repetition, starting one later each time (load drifts hit all alike)."""
    names = list(sides)
    out: dict[str, list[float]] = {n: [] for n in names}
    for i in range(reps):
        for k in range(len(names)):
            name = names[(i + k) % len(names)]
            out[name].append(sides[name]())
    return out


def our_iterator(pre_dir, patch, batch, augmentation: str = "device"):
    from c2fnas_auto.training.dataloader import load_cases, make_batch_iterator
    from c2fnas_auto.training.splits import fold_case_ids

    train_ids, _ = fold_case_ids(pre_dir, 0)
    return make_batch_iterator(load_cases(pre_dir, train_ids), patch, batch, seed=0, num_workers=0, augment=True,
                               augmentation=augmentation)


def nnunet_trainer_for(ws, nn_task, patch, batch, deep_supervision: bool):
    from benchmarks.peers import nnunet_trainer, set_nnunet_env

    set_nnunet_env(ws.nnunet_env(nn_task.parent, ws.sub("results_nnunet")))
    os.environ["nnUNet_n_proc_DA"] = "0"
    trainer = nnunet_trainer(nn_task)
    trainer.configuration_manager.configuration["patch_size"] = list(patch)
    trainer.configuration_manager.configuration["batch_size"] = batch
    trainer.batch_size = batch
    trainer.enable_deep_supervision = deep_supervision
    return trainer


def nnunet_iterator(ws, nn_task, patch, batch):
    train_gen, _ = nnunet_trainer_for(ws, nn_task, patch, batch, deep_supervision=False).get_dataloaders()
    return train_gen


def run(ws, profile: Profile) -> RowResult:
    require_module("nnunetv2", "peer data loader")
    require_our("c2fnas_auto.training.dataloader")
    _, pre_dir = ws.ours_prepared(base_channels=profile.ts_base_channels)
    nn_task = ws.nnunet_prepared()
    patch, batch = tuple(profile.ts_patch), profile.ts_batch
    its = {b: our_iterator(pre_dir, patch, batch, b) for b in BACKENDS}
    its["nnunet"] = nnunet_iterator(ws, nn_task, patch, batch)
    for it in its.values():
        next(it)  # warm-up (first batch builds caches / opens files)
    n = profile.dp_batches
    pps = rotate({k: (lambda it=it: patches_per_second(it, n, batch)) for k, it in its.items()}, profile.fast_reps)
    med = {k: median(v) for k, v in pps.items()}
    r_dev = paired_ratio(pps["device"], pps["nnunet"])
    r_bg = paired_ratio(pps["batchgenerators"], pps["nnunet"])
    r_dev_bg = paired_ratio(pps["device"], pps["batchgenerators"])
    best = max(r for r in (r_dev, r_bg) if r is not None) if (r_dev or r_bg) else None
    return RowResult(
        row=ROW, title=TITLE,
        note=(f"patch {'x'.join(map(str, patch))}, batch {batch}, {n} batches per repetition, full default "
              f"augmentation, single process; ours = device backend on CPU tensors (batchgenerators backend "
              f"{med['batchgenerators']:.2f} patches/s, ratio {r_bg:.2f}; device / batchgenerators "
              f"{r_dev_bg:.2f}); ratio = our throughput / nnU-Net's (higher is better)"),
        summary=Summary(ours=f"{med['device']:.2f} patches/s", peer=f"nnU-Net v2 {med['nnunet']:.2f} patches/s",
                        ratio=r_dev, goal="best backend >= 1.5x nnU-Net; device >= 3x batchgenerators",
                        met=None if best is None or r_dev_bg is None else (best >= 1.5 and r_dev_bg >= 3.0)),
        details={"patches_per_second_ours": pps["device"], "patches_per_second_ours_batchgenerators":
                 pps["batchgenerators"], "patches_per_second_nnunet": pps["nnunet"], "median_ours": med["device"],
                 "median_ours_batchgenerators": med["batchgenerators"], "median_nnunet": med["nnunet"],
                 "ratio_batchgenerators_vs_nnunet": r_bg, "ratio_device_vs_batchgenerators": r_dev_bg,
                 "patch": list(patch), "batch": batch},
    )
