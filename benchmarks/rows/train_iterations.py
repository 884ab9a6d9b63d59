"""Row 4b: training iterations per second, loader plus step, ours vs nnU-Net v2's trainer.

What a training epoch costs per iteration on this machine: draw and augment one batch,
then one optimiser step, in one process (no loader workers, as in row 4). Ours: the
Trainer's pieces (`make_batch_iterator` with either augmentation backend, then
`loop.train_step`: the plans' network with its deep supervision, Dice+CE, SGD, gradient
clipping). nnU-Net: its trainer as it trains (`nnUNetTrainer.initialize`, its loader from
`get_dataloaders`, `train_step`), with its defaults (deep supervision on). Same patch and
batch (the profile's). The sides take turns within every repetition.

Two more sides say where a gap comes from (fp32, same patch and batch, device backend):
`residual` is our pipeline with the residual cell style (`--cell-style residual`, about
0.6x the default network's FLOPs), and `pipeline_same_net` is our loader, loss and
`train_step` driving nnU-Net's own network (deep supervision on, as nnU-Net trains it), so
only the pipeline differs from the nnU-Net side. The headline and the goal stay on the
default network.

The options a user can switch on (nas/execution.py) are sides too, on the default network with the
device backend: `bf16` and `compile` (`--precision bf16`, `--compile`; nas/execution.py),
both in the CPU's default channels-last layout, and `ncdhw` and `bf16_ncdhw`
(`--no-channels-last`: NCDHW, the layout nnU-Net runs in). Their ratios to
nnU-Net (fp32) are paired per repetition like the headline's; "best option" is the
largest median of them. Compilation happens in the untimed warm-up call. An option side that
fails to build or to run its warm-up (torch.compile of the default network fails on the CPU
with some torch releases) is recorded as failed with its one-line reason, and the row measures
the other sides: an option a user cannot switch on here never costs the row.
"""

from __future__ import annotations

import time

from benchmarks.common import (Profile, RowResult, Summary, median, skipped_sides, paired_ratio, require_module,
                               require_our)
from benchmarks.rows.data_pipeline import BACKENDS, nnunet_trainer_for, our_iterator, rotate
from benchmarks.rows.train_step import our_network

ROW = "train_iterations"
TITLE = "4b. Training iterations"


def iterations_per_second(step, iterations: int) -> float:
    t0 = time.perf_counter()
    for _ in range(iterations):
        step()
    return iterations / (time.perf_counter() - t0)


# name -> ExecutionOptions fields of an option side (our_stepper's default is fp32 in the device's layout)
OPTION_SIDES = {"ncdhw": {"channels_last": False}, "bf16": {"precision": "bf16"}, "compile": {"compile": True},
                "bf16_ncdhw": {"precision": "bf16", "channels_last": False}}


def our_stepper(plans, pre_dir, patch, batch, augmentation: str, net=None, execution=None):
    """Our loader and `train_step`, on the plans' network unless `net` is given, with the
    execution options a user can pick (nas/execution.py; None: fp32 in the device's layout)."""
    import torch

    from c2fnas_auto.nas.execution import ExecutionOptions, prepare_network
    from c2fnas_auto.training.loop import StepContext, train_step
    from c2fnas_auto.training.loss import DeepSupervisionLoss
    from c2fnas_auto.training.schedule import build_optimizer

    torch.manual_seed(0)
    if net is None:
        net, config = our_network(plans)
        config.check_patch(patch)
    execution = execution or ExecutionOptions(precision="fp32")
    prepare_network(net, execution)
    ctx = StepContext(net, build_optimizer(net), DeepSupervisionLoss(), torch.device("cpu"), execution=execution)
    batches = our_iterator(pre_dir, patch, batch, augmentation)
    net.train()
    return lambda: train_step(ctx, next(batches))


def option_steppers(make, names) -> tuple[dict, dict[str, str]]:
    """Build and warm up one stepper per option side with `make(name)`; a side whose build or
    first call raises goes to the second dict with its reason instead of failing the row."""
    steps, failed = {}, {}
    for name in names:
        try:
            step = make(name)
            step()  # warm-up: compilation happens here
        except Exception as exc:  # any failure of an optional backend (InductorError, RuntimeError...)
            first = (str(exc).strip().splitlines() or [""])[0]
            failed[name] = f"{type(exc).__name__}: {first}"[:300]
            continue
        steps[name] = step
    return steps, failed


def nnunet_stepper(ws, nn_task, patch, batch):
    trainer = nnunet_trainer_for(ws, nn_task, patch, batch, deep_supervision=True)
    trainer.initialize()
    train_gen, _ = trainer.get_dataloaders()
    trainer.network.train()
    return lambda: trainer.train_step(next(train_gen))


def _fmt(r) -> str:
    return "n/a" if r is None else f"{r:.2f}"


def run(ws, profile: Profile) -> RowResult:
    require_module("nnunetv2", "peer trainer")
    require_our("c2fnas_auto.training.loop")
    plans, pre_dir = ws.ours_prepared(base_channels=profile.ts_base_channels)
    nn_task = ws.nnunet_prepared()
    patch, batch = tuple(profile.ts_patch), profile.ts_batch
    from benchmarks.peers import nnunet_network
    from c2fnas_auto.nas.execution import ExecutionOptions

    steps = {b: our_stepper(plans, pre_dir, patch, batch, b) for b in BACKENDS}
    steps["nnunet"] = nnunet_stepper(ws, nn_task, patch, batch)
    residual, residual_config = our_network(plans, cell_style="residual")
    residual_config.check_patch(patch)
    steps["residual"] = our_stepper(plans, pre_dir, patch, batch, "device", net=residual)
    steps["pipeline_same_net"] = our_stepper(  # nnU-Net's network in its own layout: only the pipeline differs
        plans, pre_dir, patch, batch, "device", execution=ExecutionOptions(precision="fp32", channels_last=False),
        net=nnunet_network(nn_task, len(plans.channel_names), plans.num_classes, deep_supervision=True))
    for step in steps.values():
        step()  # warm-up: first-call allocations, file opening
    skipped = skipped_sides(OPTION_SIDES)
    options, failed = option_steppers(
        lambda name: our_stepper(plans, pre_dir, patch, batch, "device",
                                 execution=ExecutionOptions(**{"precision": "fp32", **OPTION_SIDES[name]})),
        [k for k in OPTION_SIDES if k not in skipped])
    steps.update(options)
    n = max(2, profile.dp_batches // 2)
    ips = rotate({k: (lambda s=s: iterations_per_second(s, n)) for k, s in steps.items()}, profile.reps)
    med = {k: median(v) for k, v in ips.items()}
    r = paired_ratio(ips["device"], ips["nnunet"])
    r_bg = paired_ratio(ips["batchgenerators"], ips["nnunet"])
    r_res = paired_ratio(ips["residual"], ips["nnunet"])
    r_same = paired_ratio(ips["pipeline_same_net"], ips["nnunet"])
    r_opt = {k: paired_ratio(ips[k], ips["nnunet"]) if k in ips else None for k in OPTION_SIDES}
    spread = {k: [min(v), max(v)] for k, v in ips.items()}
    best = max((k for k in OPTION_SIDES if r_opt[k] is not None), key=lambda k: r_opt[k], default=None)
    options_note = "; ".join(f"{k} failed ({failed[k]})" if k in failed else f"{k} {skipped[k]}" if k in skipped else
                             f"{k} {med[k]:.3f} it/s (ratio {_fmt(r_opt[k])})" for k in OPTION_SIDES)
    return RowResult(
        row=ROW, title=TITLE,
        note=(f"patch {'x'.join(map(str, patch))}, batch {batch}, {n} iterations per repetition, single process, "
              f"CPU fp32; ours = device augmentation backend (batchgenerators backend {med['batchgenerators']:.3f} "
              f"it/s, ratio {r_bg:.2f}); our plans' network vs nnU-Net's default trainer; where the gap lies: "
              f"residual cells {med['residual']:.3f} it/s (ratio {_fmt(r_res)}), our pipeline on nnU-Net's "
              f"network {med['pipeline_same_net']:.3f} it/s (ratio {_fmt(r_same)}); options a user can switch "
              f"on: {options_note}; best option {best} (goal >= 1.5); higher is better"),
        summary=Summary(ours=f"{med['device']:.3f} it/s", peer=f"nnU-Net v2 {med['nnunet']:.3f} it/s", ratio=r,
                        goal="iterations/s >= nnU-Net (ratio >= 1)", met=None if r is None else r >= 1.0),
        details={"iterations_per_second_ours": ips["device"],
                 "iterations_per_second_ours_batchgenerators": ips["batchgenerators"],
                 "iterations_per_second_nnunet": ips["nnunet"],
                 "iterations_per_second_ours_residual": ips["residual"],
                 "iterations_per_second_ours_pipeline_nnunet_network": ips["pipeline_same_net"],
                 "median": med, "ratio_batchgenerators": r_bg, "ratio_residual": r_res,
                 "ratio_pipeline_same_network": r_same,
                 "iterations_per_second_options": {k: ips[k] for k in OPTION_SIDES if k in ips},
                 "failed_options": failed, "skipped_options": skipped,
                 "ratio_options": r_opt, "best_option": best,
                 "best_option_ratio": r_opt[best] if best else None,
                 "best_option_goal_met": None if best is None else r_opt[best] >= 1.5,
                 "spread_min_max": spread,
                 "patch": list(patch), "batch": batch, "iterations": n},
    )
