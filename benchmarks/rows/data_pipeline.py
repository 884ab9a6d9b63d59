"""Row 4: augmented training patches per second, our loader vs nnU-Net v2's.

Both read their own preprocessed copy of the same task (row 1's), sample fold 0's
training cases at the same patch and batch size with their full default augmentation,
in the calling process (no worker processes: on a 2-core box workers only hide the
cost; the per-core throughput is what we compare). nnU-Net's loader is the one its
trainer builds (`nnUNetTrainer.get_dataloaders`, with nnUNet_n_proc_DA=0), with deep
supervision off so that it does not downsample extra targets our loader does not make.
"""

from __future__ import annotations

import os
import time

from benchmarks.common import (Profile, RowResult, Summary, alternate, median, paired_ratio,
                               require_module, require_our)

ROW = "data_pipeline"
TITLE = "4. Data pipeline"


def patches_per_second(it, batches: int, batch_size: int) -> float:
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch_size / (time.perf_counter() - t0)


def our_iterator(pre_dir, patch, batch):
    from c2fnas_auto.training.dataloader import load_cases, make_batch_iterator
    from c2fnas_auto.training.splits import fold_case_ids

    train_ids, _ = fold_case_ids(pre_dir, 0)
    return make_batch_iterator(load_cases(pre_dir, train_ids), patch, batch, seed=0, num_workers=0, augment=True)


def nnunet_iterator(ws, nn_task, patch, batch):
    from benchmarks.peers import nnunet_trainer, set_nnunet_env

    set_nnunet_env(ws.nnunet_env(nn_task.parent, ws.sub("results_nnunet")))
    os.environ["nnUNet_n_proc_DA"] = "0"
    trainer = nnunet_trainer(nn_task)
    trainer.configuration_manager.configuration["patch_size"] = list(patch)
    trainer.batch_size = batch
    trainer.enable_deep_supervision = False
    train_gen, _ = trainer.get_dataloaders()
    return train_gen


def run(ws, profile: Profile) -> RowResult:
    require_module("nnunetv2", "peer data loader")
    require_our("c2fnas_auto.training.dataloader")
    _, pre_dir = ws.ours_prepared(base_channels=profile.ts_base_channels)
    nn_task = ws.nnunet_prepared()
    patch, batch = tuple(profile.ts_patch), profile.ts_batch
    ours_it = our_iterator(pre_dir, patch, batch)
    peer_it = nnunet_iterator(ws, nn_task, patch, batch)
    next(ours_it)  # warm-up (first batch builds caches / opens files)
    next(peer_it)
    n = profile.dp_batches
    p_ours, p_peer = alternate(lambda i: patches_per_second(ours_it, n, batch),
                               lambda i: patches_per_second(peer_it, n, batch), profile.fast_reps)
    mo, mp = median(p_ours), median(p_peer)
    r = paired_ratio(p_ours, p_peer)
    return RowResult(
        row=ROW, title=TITLE,
        note=(f"patch {'x'.join(map(str, patch))}, batch {batch}, {n} batches per repetition, full default "
              f"augmentation, single process; ratio = our throughput / nnU-Net's (higher is better)"),
        summary=Summary(ours=f"{mo:.2f} patches/s", peer=f"nnU-Net v2 {mp:.2f} patches/s", ratio=r,
                        goal="throughput >= nnU-Net (ratio >= 1)", met=None if r is None else r >= 1.0),
        details={"patches_per_second_ours": p_ours, "patches_per_second_nnunet": p_peer, "median_ours": mo,
                 "median_nnunet": mp, "patch": list(patch), "batch": batch},
    )
