"""Row 2: our sliding window vs `monai.inferers.sliding_window_inference`.

Same network (the reference genotype, narrow so that windowing overhead is visible
next to the convolutions), same roi, overlap/step 0.5, Gaussian weighting (sigma 1/8
of the roi on both sides), no TTA, and the same number of windows per forward pass on
both sides: 1 and 2 (MONAI's `sw_batch_size`, our `tile_batch_size`), each pair
alternated. Each tool's default (ours 2, MONAI 1: `SlidingWindowInferer`'s default) is
reported as well, but the headline ratio is the larger of the two equal-setting ratios:
a CPU sends single-sample 3D convolutions to a slow kernel, so comparing ours at 2 with
MONAI at 1 would mostly measure that. The volume's sizes are chosen so that both tile
the volume at the same positions (size - roi divisible by roi / 2). The row checks that
with constant weighting the outputs agree to float rounding (same tiles, same
averaging). With Gaussian weighting they differ where windows overlap because the
importance maps differ in their tails: MONAI floors its Gaussian at 1e-3, ours keeps it
down to the smallest positive value (about 1e-10 for a roi of 16), so far-from-centre
voxels of a window weigh much less in ours. (With MONAI's map substituted into ours the
outputs are identical: checked by hand.)

The options a user can switch on (nas/execution.py: `--channels-last`, `--precision bf16`,
`--compile`, and compile with channels-last) are further sides of ours, each on its own copy
of the same weights, each alternated with MONAI (fp32, plain network) at both windows per
forward; their time ratios are in the note and the JSON, and the best of them is compared
with the goal of >= 1.3x MONAI's speed (time ratio <= 0.77). Compilation happens in the
untimed first call.
"""

from __future__ import annotations

import copy
from typing import Callable

import torch

from benchmarks.common import (Profile, RowResult, Summary, alternate, fmt_seconds, median, skipped_sides,
                               paired_ratio, ratio, require_module, require_our, timed)

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


BATCH_SIZES = (1, 2)  # windows per forward, the same on both sides
# the network as given (NCDHW) is both sides' headline, so they compare like for like; channels_last
# (our CPU default) is a side of its own
# name -> ExecutionOptions fields of an option side (the others: fp32, NCDHW, not compiled)
OPTION_SIDES = {"channels_last": {"channels_last": True}, "bf16": {"precision": "bf16"},
                "compile": {"compile": True}, "bf16_channels_last": {"precision": "bf16", "channels_last": True}}
OUR_DEFAULT, MONAI_DEFAULT = 2, 1  # sliding_window_predict(tile_batch_size=2); SlidingWindowInferer(sw_batch_size=1)


def run(ws, profile: Profile) -> RowResult:
    require_module("monai", "peer for sliding-window inference")
    require_our("c2fnas_auto.inference.sliding_window")
    from monai.inferers import sliding_window_inference

    from c2fnas_auto.inference.sliding_window import sliding_window_predict
    from c2fnas_auto.nas.execution import ExecutionOptions, prepare_network

    num_classes = 3
    torch.manual_seed(0)
    _, _, net = reference_network(1, num_classes, profile.sw_base_channels)
    net.eval()
    volume = torch.randn(1, 1, *profile.sw_volume)
    roi = tuple(profile.sw_patch)
    outputs: dict[str, torch.Tensor] = {}

    def ours(bs: int, network=net, execution: ExecutionOptions = ExecutionOptions(precision="fp32"),
             key: str = "ours") -> Callable[[int], float]:
        def call(_: int) -> float:
            with torch.no_grad():
                t, out = timed(lambda: sliding_window_predict(network, volume[0], roi, num_classes, step_size=0.5,
                                                              gaussian=True, mirror_axes=None, tile_batch_size=bs,
                                                              device=torch.device("cpu"), progress=False,
                                                              execution=execution))
            outputs[key] = out
            return t
        return call

    def peer(bs: int) -> Callable[[int], float]:
        def call(_: int) -> float:
            with torch.no_grad():
                t, out = timed(lambda: sliding_window_inference(volume, roi, bs, net, overlap=0.5, mode="gaussian"))
            outputs["monai"] = out[0]
            return t
        return call

    # untimed: with constant weights the two must agree (same tiles, same averaging)
    with torch.no_grad():
        a = sliding_window_predict(net, volume[0], roi, num_classes, step_size=0.5, gaussian=False,
                                   mirror_axes=None, device=torch.device("cpu"), progress=False)
        b = sliding_window_inference(volume, roi, 1, net, overlap=0.5, mode="constant")[0]
    diff_constant = float((a - b).abs().max())
    times: dict[int, tuple[list[float], list[float]]] = {}
    for bs in BATCH_SIZES:
        # one untimed call each: first-call allocations and lazy imports are not what we compare
        ours(bs)(-1)
        peer(bs)(-1)
        times[bs] = alternate(ours(bs), peer(bs), profile.fast_reps)
    opt_times, opt_ratios, opt_diff = {}, {}, {}
    skipped = skipped_sides(OPTION_SIDES)
    for name, opts in OPTION_SIDES.items():
        if name in skipped:
            opt_ratios[name] = None
            continue
        execution = ExecutionOptions(**{"precision": "fp32", "channels_last": False, **opts})
        variant = prepare_network(copy.deepcopy(net), execution).eval()
        opt_times[name] = {}
        for bs in BATCH_SIZES:
            ours(bs, variant, execution, name)(-1)  # untimed: compiles
            opt_times[name][bs] = alternate(ours(bs, variant, execution, name), peer(bs), profile.fast_reps)
        opt_ratios[name] = min((r for r in (paired_ratio(*opt_times[name][bs]) for bs in BATCH_SIZES)
                                if r is not None), default=None)
        opt_diff[name] = float((outputs[name] - outputs["ours"]).abs().max())
    best = min((k for k in OPTION_SIDES if opt_ratios[k] is not None), key=lambda k: opt_ratios[k], default=None)
    options_note = "; ".join(f"{k} {skipped[k]}" if k in skipped else
                             f"{k} ratio {_fmt_ratio(opt_ratios[k])} (max |diff| to fp32 {opt_diff[k]:.1e})"
                             for k in OPTION_SIDES)
    diff = float((outputs["ours"] - outputs["monai"]).abs().max())
    scale = float(outputs["monai"].abs().max())
    med = {bs: (median(t[0]), median(t[1])) for bs, t in times.items()}
    ratios = {bs: paired_ratio(*times[bs]) for bs in BATCH_SIZES}
    r = None if any(v is None for v in ratios.values()) else max(ratios.values())
    r_default = ratio(med[OUR_DEFAULT][0], med[MONAI_DEFAULT][1])
    each = "; ".join(f"{bs} per forward: ratio {ratios[bs]:.2f}" for bs in BATCH_SIZES if ratios[bs] is not None)
    return RowResult(
        row=ROW, title=TITLE,
        note=(f"volume 1x1x{'x'.join(map(str, profile.sw_volume))}, roi {'x'.join(map(str, roi))}, reference "
              f"genotype at base width {profile.sw_base_channels}, CPU; both sides at the same windows per "
              f"forward ({each}; the ratio shown is the larger); each at its default (ours {OUR_DEFAULT}, MONAI "
              f"sw_batch_size {MONAI_DEFAULT}): ratio {_fmt_ratio(r_default)}; "
              f"max |ours - MONAI| = {diff_constant:.1e} with constant weights, {diff:.2e} with Gaussian weights "
              f"(max |logit| {scale:.2f}; MONAI floors its Gaussian map at 1e-3, ours does not); options "
              f"(time ratio to MONAI at equal windows per forward, the better of 1 and 2): {options_note}; "
              f"best option {best} (goal <= 0.77, i.e. >= 1.3x MONAI's speed)"),
        summary=Summary(ours=", ".join(f"{fmt_seconds(med[bs][0])} ({bs}/fwd)" for bs in BATCH_SIZES),
                        peer="MONAI " + ", ".join(f"{fmt_seconds(med[bs][1])} ({bs}/fwd)" for bs in BATCH_SIZES),
                        ratio=r, goal="<= 0.7x MONAI at equal windows per forward",
                        met=None if r is None else r <= 0.7),
        details={"windows_per_forward": list(BATCH_SIZES),
                 "seconds_ours": {str(bs): times[bs][0] for bs in BATCH_SIZES},
                 "seconds_monai": {str(bs): times[bs][1] for bs in BATCH_SIZES},
                 "median_seconds_ours": {str(bs): med[bs][0] for bs in BATCH_SIZES},
                 "median_seconds_monai": {str(bs): med[bs][1] for bs in BATCH_SIZES},
                 "paired_ratio": {str(bs): ratios[bs] for bs in BATCH_SIZES},
                 "defaults": {"ours_tile_batch_size": OUR_DEFAULT, "monai_sw_batch_size": MONAI_DEFAULT,
                              "ratio_of_medians": r_default},
                 "max_abs_difference": diff, "max_abs_difference_constant": diff_constant, "max_abs_logit": scale,
                 "options": {k: {"seconds_ours": {str(bs): opt_times[k][bs][0] for bs in BATCH_SIZES},
                                 "seconds_monai": {str(bs): opt_times[k][bs][1] for bs in BATCH_SIZES},
                                 "ratio": opt_ratios[k], "max_abs_difference_to_fp32": opt_diff[k]}
                             for k in OPTION_SIDES if k not in skipped},
                 "skipped_options": skipped,
                 "best_option": best, "best_option_ratio": opt_ratios[best] if best else None,
                 "best_option_goal_met": None if best is None else opt_ratios[best] <= 1 / 1.3},
    )


def _fmt_ratio(r: float | None) -> str:
    return "n/a" if r is None else f"{r:.2f}"
