"""python -m benchmarks.rewrite_ab --quick | --full [--rewrite NAME] [--reps N] [--precisions fp32 bf16] [--workdir DIR] [--out FILE]

Does an exact rewrite of the network make training faster beyond the noise? Row 4b's
iterations per second (our loader and `train_step` on the plans' network, device backend,
same patch and batch) with the rewrite on and off, on two copies of the same weights, the
two sides taking turns in every repetition (`rows.data_pipeline.rotate`); the ratio on/off
is the median of the per-repetition ratios, with the repetitions' spread. The rewrites
(`--rewrite`): `fused_upsample` (the wired head's ReLU -> trilinear -> 3x3x3 conv run as one
conv at the low resolution, `nas.ops.upsample_conv3d`) and `axis_upsample` (every trilinear
upsampling by factors of 1 and 2 run axis by axis, `nas.ops.upsample_x2`, instead of
`F.interpolate`), one in the training step rather than the network: `channel_argmax`
(the per-step confusion counts take `utils.tensors.channel_argmax` instead of PyTorch's
argmax over the class axis), and the layout: `channels_last` (the CPU default, NDHWC kept
from the first conv to the last, `nas.layout`) against `--no-channels-last` (NCDHW).
A benchmark, not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
from pathlib import Path

from c2fnas_auto.cli._common import cli_entry


def switched_off(net, flag: str):
    """A copy of `net` (same weights) with the rewrite's flag off in every module that has it."""
    ref = copy.deepcopy(net)
    for m in ref.modules():
        if getattr(m, flag, False):
            setattr(m, flag, False)
    return ref


def with_torch_argmax(step):
    """`step` with the training loop's confusion counts taking PyTorch's argmax (the
    `channel_argmax` rewrite off), only while it runs: the other side runs in turn."""
    from c2fnas_auto.training import loop

    def run():
        fast = loop.channel_argmax
        loop.channel_argmax = lambda x, dim=1: x.argmax(dim)
        try:
            return step()
        finally:
            loop.channel_argmax = fast
    return run


# rewrite -> the module flag that switches it (ConvBlock.fused_upsample, Upsample.fast); None:
# a rewrite of the training step, switched off by `with_torch_argmax`; LAYOUT: the execution option
LAYOUT = "channels_last"
REWRITES = {"fused_upsample": "fused_upsample", "axis_upsample": "fast", "channel_argmax": None, LAYOUT: LAYOUT}


@cli_entry
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.rewrite_ab", description=__doc__.split("\n\n")[0])
    g = p.add_mutually_exclusive_group(required=True)
    for name in ("quick", "full", "tiny"):
        g.add_argument(f"--{name}", action="store_const", const=name, dest="profile")
    p.add_argument("--rewrite", choices=sorted(REWRITES), default="fused_upsample", help="the rewrite switched off")
    p.add_argument("--reps", type=int, default=5, help="alternated repetitions per precision")
    p.add_argument("--precisions", nargs="+", choices=("fp32", "bf16"), default=["fp32", "bf16"])
    p.add_argument("--workdir", type=Path, default=None, help="scratch folder (kept; default: temporary)")
    p.add_argument("--out", type=Path, default=None, help="JSON with every repetition")
    args = p.parse_args(argv)
    import torch

    from benchmarks.common import PROFILES, median, paired_ratio
    from benchmarks.rows.data_pipeline import rotate
    from benchmarks.rows.train_iterations import iterations_per_second, our_stepper
    from benchmarks.rows.train_step import our_network
    from benchmarks.workspace import Workspace
    from c2fnas_auto.utils.io import atomic_write_json

    profile = PROFILES[args.profile]
    patch, batch = tuple(profile.ts_patch), profile.ts_batch
    n = max(2, profile.dp_batches // 2)
    result: dict = {"rewrite": args.rewrite, "profile": profile.name, "patch": list(patch), "batch": batch,
                    "iterations_per_repetition": n, "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "loadavg_start": list(os.getloadavg()), "precisions": {}}
    with tempfile.TemporaryDirectory(prefix="c2fnas-ab-") as tmp:
        ws = Workspace(root=(args.workdir or Path(tmp)).resolve(), profile=profile)
        ws.root.mkdir(parents=True, exist_ok=True)
        plans, pre_dir = ws.ours_prepared(base_channels=profile.ts_base_channels)
        for precision in args.precisions:
            net, config = our_network(plans)
            config.check_patch(patch)
            flag = REWRITES[args.rewrite]
            layout = flag == LAYOUT  # the layout is an execution option, not a module flag
            off = our_stepper(plans, pre_dir, patch, batch, "device", precision=precision,
                              net=copy.deepcopy(net) if flag in (None, LAYOUT) else switched_off(net, flag),
                              channels_last=False if layout else None)
            steps = {"rewrite_on": our_stepper(plans, pre_dir, patch, batch, "device", net=net, precision=precision,
                                               channels_last=True if layout else None),
                     "rewrite_off": with_torch_argmax(off) if flag is None else off}
            for step in steps.values():
                step()  # warm-up
            ips = rotate({k: (lambda s=s: iterations_per_second(s, n)) for k, s in steps.items()}, args.reps)
            r = paired_ratio(ips["rewrite_on"], ips["rewrite_off"])
            per_rep = [a / b for a, b in zip(ips["rewrite_on"], ips["rewrite_off"])]
            result["precisions"][precision] = {
                "iterations_per_second": ips, "median": {k: median(v) for k, v in ips.items()},
                "ratio_on_over_off": r, "ratio_per_repetition": per_rep,
                "ratio_spread_min_max": [min(per_rep), max(per_rep)]}
            print(f"{precision}: on {median(ips['rewrite_on']):.3f} it/s, off {median(ips['rewrite_off']):.3f} it/s, "
                  f"ratio {r:.3f} (repetitions {min(per_rep):.3f}-{max(per_rep):.3f})", flush=True)
    result["loadavg_end"] = list(os.getloadavg())
    if args.out:
        atomic_write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
