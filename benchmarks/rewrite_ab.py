"""python -m benchmarks.rewrite_ab --quick | --full [--rewrite NAME] [--reps N] [--precisions fp32 bf16]
    [--workdir DIR] [--out FILE]

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
import os
import sys
import tempfile
from pathlib import Path

from c2fnas_auto.cli._common import cli_entry


def network_copy(net, plans):
    """The plans' network built now (under the fast-path switches in force) with `net`'s weights."""
    from benchmarks.rows.train_step import our_network

    ref, _ = our_network(plans)
    ref.load_state_dict(net.state_dict())
    return ref


# the rewrites are the fast-path switches (utils/fast_paths.py), the layout the execution option
LAYOUT = "channels_last"
REWRITES = ("fused_upsample", "axis_upsample", "channel_argmax", LAYOUT)


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
    from c2fnas_auto.nas.execution import ExecutionOptions
    from c2fnas_auto.utils.fast_paths import fast_paths_set
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
            layout = args.rewrite == LAYOUT
            with fast_paths_set(**({} if layout else {args.rewrite: False})):  # the off side is built without it
                off = our_stepper(plans, pre_dir, patch, batch, "device", net=network_copy(net, plans),
                                  execution=ExecutionOptions(precision=precision,
                                                             channels_last=False if layout else None))
            on = ExecutionOptions(precision=precision, channels_last=True if layout else None)
            steps = {"rewrite_on": our_stepper(plans, pre_dir, patch, batch, "device", net=net, execution=on),
                     "rewrite_off": off}
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
