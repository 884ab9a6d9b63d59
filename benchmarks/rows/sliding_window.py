"""Row 2: our sliding window vs `monai.inferers.sliding_window_inference`.

Same network (the reference genotype, narrow so that windowing overhead is visible
next to the convolutions), same roi, overlap/step 0.5, Gaussian weighting (sigma 1/8
of the roi on both sides), one window per forward pass, no TTA. The volume's sizes
are chosen so that both tile the volume at the same positions (size - roi divisible by
roi / 2). The row checks that with constant weighting the outputs agree to float
rounding (same tiles, same averaging). With Gaussian weighting they differ where
windows overlap because the importance maps differ in their tails: MONAI floors its
Gaussian at 1e-3, ours keeps it down to the smallest positive value (about 1e-10 for
a roi of 16), so far-from-centre voxels of a window weigh much less in ours. (With
MONAI's map substituted into ours the outputs are identical: checked by hand.)
"""

from __future__ import annotations

import torch

from benchmarks.common import (Profile, RowResult, Summary, alternate, fmt_seconds, median, paired_ratio,
                               require_module, require_our, timed)

ROW = "sliding_window"
TITLE = "2. Sliding-window inference"


def reference_network(in_channels: int, num_classes: int, base_channels: int, deep_supervision: bool = False):
    """The shipped C2FNAS-Panc genotype at a given width, isotropic strides, eval mode."""
    from c2fnas_auto.nas.config import NetworkConfig
    from c2fnas_auto.nas.genotype import reference_genotype
    from c2fnas_auto.nas.network import build_network
    from c2fnas_auto.planning.planner import level_channels_for

    config = NetworkConfig(in_channels=in_channels, num_classes=num_classes, stem_channels=base_channels,
                           level_channels=level_channels_for(base_channels), deep_supervision=deep_supervision)
    return reference_genotype(), config, build_network(reference_genotype(), config)


def run(ws, profile: Profile) -> RowResult:
    require_module("monai", "peer for sliding-window inference")
    require_our("c2fnas_auto.inference.sliding_window")
    from monai.inferers import sliding_window_inference

    from c2fnas_auto.inference.sliding_window import sliding_window_predict

    num_classes = 3
    torch.manual_seed(0)
    _, _, net = reference_network(1, num_classes, profile.sw_base_channels)
    net.eval()
    volume = torch.randn(1, 1, *profile.sw_volume)
    roi = tuple(profile.sw_patch)
    outputs: dict[str, torch.Tensor] = {}

    def ours(_: int) -> float:
        with torch.no_grad():
            t, out = timed(lambda: sliding_window_predict(net, volume[0], roi, num_classes, step_size=0.5,
                                                          gaussian=True, mirror_axes=None,
                                                          device=torch.device("cpu"), progress=False))
        outputs["ours"] = out
        return t

    def peer(_: int) -> float:
        with torch.no_grad():
            t, out = timed(lambda: sliding_window_inference(volume, roi, 1, net, overlap=0.5, mode="gaussian"))
        outputs["monai"] = out[0]
        return t

    # untimed: with constant weights the two must agree (same tiles, same averaging)
    with torch.no_grad():
        a = sliding_window_predict(net, volume[0], roi, num_classes, step_size=0.5, gaussian=False,
                                   mirror_axes=None, device=torch.device("cpu"), progress=False)
        b = sliding_window_inference(volume, roi, 1, net, overlap=0.5, mode="constant")[0]
    diff_constant = float((a - b).abs().max())
    # one untimed call each: first-call allocations and lazy imports are not what we compare
    ours(-1)
    peer(-1)
    t_ours, t_peer = alternate(ours, peer, profile.fast_reps)
    diff = float((outputs["ours"] - outputs["monai"]).abs().max())
    scale = float(outputs["monai"].abs().max())
    mo, mp = median(t_ours), median(t_peer)
    r = paired_ratio(t_ours, t_peer)
    return RowResult(
        row=ROW, title=TITLE,
        note=(f"volume 1x1x{'x'.join(map(str, profile.sw_volume))}, roi {'x'.join(map(str, roi))}, reference "
              f"genotype at base width {profile.sw_base_channels}, each at its default windows per forward "
              f"(ours 2, MONAI sw_batch_size 1), CPU; "
              f"max |ours - MONAI| = {diff_constant:.1e} with constant weights, {diff:.2e} with Gaussian weights "
              f"(max |logit| {scale:.2f}; MONAI floors its Gaussian map at 1e-3, ours does not)"),
        summary=Summary(ours=fmt_seconds(mo), peer=f"MONAI {fmt_seconds(mp)}", ratio=r, goal="<= 0.7x MONAI",
                        met=None if r is None else r <= 0.7),
        details={"seconds_ours": t_ours, "seconds_monai": t_peer, "median_seconds_ours": mo,
                 "median_seconds_monai": mp, "max_abs_difference": diff, "max_abs_difference_constant": diff_constant, "max_abs_logit": scale},
    )
