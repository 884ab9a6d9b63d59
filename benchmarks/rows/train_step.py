"""Row 3: one SGD training step, our plans' network vs nnU-Net v2's default network.

Ours: the plans' genotype (the shipped reference genotype) built from our plans of the
row-1 task. Peer: nnU-Net's 3d_fullres network built from *its* plans of the same task
(`get_network_from_plans`, a PlainConvUNet). Same patch and batch (the profile's, which
both networks divide), deep supervision off on both, the same loss (cross-entropy) and
optimiser (SGD, momentum 0.99, Nesterov) so only the networks differ. FLOPs of one
forward pass of one sample are counted with `torch.utils.flop_counter.FlopCounterMode`
on both, and shown next to our cost model's analytic figure.

Where a network's step time goes: each network's convolutions are also timed one by one,
forward plus backward in isolation at the shapes they see in the step (`conv_seconds`).
Their sum is what the step would cost if everything between the convolutions (norms,
activations, upsampling, concatenation, loss, optimiser) were free.
"""

from __future__ import annotations

import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import (Profile, RowResult, Summary, alternate, fmt_count, fmt_seconds, median,
                               paired_ratio, ratio, require_module, require_our)

ROW = "train_step"
TITLE = "3. Training step"


def count_flops(net: torch.nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(x)
    return int(counter.get_total_flops())


def count_params(net: torch.nn.Module) -> int:
    return int(sum(p.numel() for p in net.parameters()))


def conv_seconds(net: torch.nn.Module, x: torch.Tensor, repeats: int = 3) -> float:
    """Sum over the convolutions one forward of `net` runs of their fastest fwd+bwd time alone."""
    seen: list[tuple[torch.nn.Module, tuple[int, ...]]] = []
    convs = [m for m in net.modules() if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d))]
    hooks = [m.register_forward_pre_hook(lambda m, inp: seen.append((m, tuple(inp[0].shape)))) for m in convs]
    try:
        with torch.no_grad():
            net(x)
    finally:
        for h in hooks:
            h.remove()
    total = 0.0
    for m, shape in seen:
        inp = torch.randn(shape, requires_grad=True)
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            y = m(inp)
            y.backward(torch.ones_like(y))
            best = min(best, time.perf_counter() - t0)
        total += best
    net.zero_grad(set_to_none=True)
    return total


class Stepper:
    """One network, its optimiser and a fixed batch; `step()` is the measured unit."""

    def __init__(self, net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor):
        self.net, self.x, self.y = net.train(), x, y
        self.opt = torch.optim.SGD(net.parameters(), lr=1e-2, momentum=0.99, nesterov=True, weight_decay=3e-5)
        self.loss = torch.nn.CrossEntropyLoss()

    def step(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        out = self.net(self.x)
        if isinstance(out, (list, tuple)):
            out = out[0]
        self.loss(out, self.y).backward()
        self.opt.step()

    def seconds_per_step(self, steps: int) -> float:
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            self.step()
            times.append(time.perf_counter() - t0)
        return float(median(times))


def our_network(plans, **overrides):
    """The plans' genotype built with the plans' network config, some fields overridden
    (row 3: deep supervision off; row 4b: the other cell style). Returns (network, config)."""
    from c2fnas_auto.nas.config import NetworkConfig
    from c2fnas_auto.nas.network import build_network

    config = plans.network_config()
    if overrides:
        config = NetworkConfig.from_dict({**config.to_dict(), **overrides})
    return build_network(plans.genotype, config), config


def run(ws, profile: Profile) -> RowResult:
    require_module("nnunetv2", "peer network and plans")
    require_our("c2fnas_auto.planning.pipeline")
    from c2fnas_auto.nas.cost import estimate_cost

    from benchmarks.peers import nnunet_configuration, nnunet_network

    plans, _ = ws.ours_prepared(base_channels=profile.ts_base_channels)
    nn_task = ws.nnunet_prepared()
    patch, batch = tuple(profile.ts_patch), profile.ts_batch
    torch.manual_seed(0)
    ours_net, config = our_network(plans, deep_supervision=False)
    config.check_patch(patch)
    peer_net = nnunet_network(nn_task, len(plans.channel_names), plans.num_classes)
    x = torch.randn(batch, len(plans.channel_names), *patch)
    y = torch.randint(0, plans.num_classes, (batch, *patch))
    one = x[:1]
    figures = {"ours": {"params": count_params(ours_net), "flops_counted": count_flops(ours_net, one),
                        "flops_cost_model": int(estimate_cost(plans.genotype, config, patch, batch_size=batch).flops)},
               "nnunet": {"params": count_params(peer_net), "flops_counted": count_flops(peer_net, one)}}
    s_ours, s_peer = Stepper(ours_net, x, y), Stepper(peer_net, x, y)
    s_ours.step()  # warm-up: first-call allocations
    s_peer.step()
    t_ours, t_peer = alternate(lambda i: s_ours.seconds_per_step(profile.ts_steps),
                               lambda i: s_peer.seconds_per_step(profile.ts_steps), profile.fast_reps)
    mo, mp = median(t_ours), median(t_peer)
    convs = {"ours": conv_seconds(ours_net.train(), x), "nnunet": conv_seconds(peer_net.train(), x)}
    r = paired_ratio(t_ours, t_peer)
    fr = ratio(figures["ours"]["flops_counted"], figures["nnunet"]["flops_counted"])
    nn_cfg = nnunet_configuration(nn_task)
    return RowResult(
        row=ROW, title=TITLE,
        note=(f"patch {'x'.join(map(str, patch))}, batch {batch}, CPU fp32; ours: reference genotype, widths "
              f"{config.stem_channels}/{'/'.join(map(str, config.level_channels))}; nnU-Net: "
              f"{nn_cfg['architecture']['network_class_name'].split('.')[-1]} features "
              f"{'/'.join(map(str, nn_cfg['architecture']['arch_kwargs']['features_per_stage']))}; "
              f"FLOPs ratio {fr:.2f}; cost-model FLOPs {fmt_count(figures['ours']['flops_cost_model'])} vs counted "
              f"{fmt_count(figures['ours']['flops_counted'])}; convolutions alone (fwd+bwd, one by one): ours "
              f"{fmt_seconds(convs['ours'])}, nnU-Net {fmt_seconds(convs['nnunet'])}"),
        summary=Summary(ours=f"{fmt_seconds(mo)}/step, {fmt_count(figures['ours']['params'])} params, "
                             f"{fmt_count(figures['ours']['flops_counted'])}FLOPs",
                        peer=f"nnU-Net v2 {fmt_seconds(mp)}/step, {fmt_count(figures['nnunet']['params'])} params, "
                             f"{fmt_count(figures['nnunet']['flops_counted'])}FLOPs",
                        ratio=r, goal="fewer FLOPs and time ratio <= 1",
                        met=None if r is None or fr is None else (fr < 1 and r <= 1)),
        details={"seconds_per_step_ours": t_ours, "seconds_per_step_nnunet": t_peer, "median_ours": mo,
                 "median_nnunet": mp, "flops_ratio": fr,
                 "conv_only_seconds": convs, "figures": figures, "patch": list(patch), "batch": batch,
                 "nnunet_plans_patch": nn_cfg.get("patch_size"), "our_plans_patch": list(plans.patch_size)},
    )
