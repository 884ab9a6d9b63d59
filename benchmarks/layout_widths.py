"""python -m benchmarks.layout_widths [--widths 4 8 16 32] [--patch 32 64 64] [--threads 2] [--reps 5] [--out FILE]

Is channels-last (NDHWC, the CPU default) faster than NCDHW at every width,
thread count and precision? One SGD step (forward, cross-entropy on the full-resolution
output, backward, update) of the reference genotype at each base width, batch 2, for fp32
and bf16, in both layouts; the four variants of a width take turns in every repetition
(`rows.data_pipeline.rotate`: each repetition starts one later) and each reports its median. Synthetic input: this
measures the network, not a loader.
A benchmark, not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from c2fnas_auto.cli._common import cli_entry


def stepper(base: int, patch: tuple[int, int, int], execution):
    """One SGD step of the reference genotype at stem width `base`, run as `execution` says."""
    import torch

    from c2fnas_auto.nas.config import NetworkConfig
    from c2fnas_auto.nas.execution import autocast, prepare_network
    from c2fnas_auto.nas.genotype import reference_genotype
    from c2fnas_auto.nas.network import build_network
    from c2fnas_auto.planning.planner import level_channels_for

    torch.manual_seed(0)
    config = NetworkConfig(in_channels=1, num_classes=3, stem_channels=base, level_channels=level_channels_for(base),
                           strides=((1, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2)))
    config.check_patch(patch)
    net = prepare_network(build_network(reference_genotype(), config).train(), execution)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    x, y = torch.randn(2, 1, *patch), torch.randint(0, 3, (2, *patch))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast(torch.device("cpu"), execution.precision):
            out = net(x)
            out = out[0] if isinstance(out, list) else out
            loss = torch.nn.functional.cross_entropy(out.float(), y)
        loss.backward()
        opt.step()
    return step


@cli_entry
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.layout_widths", description=__doc__.split("\n\n")[1])
    p.add_argument("--widths", type=int, nargs="+", default=[4, 8, 16, 32])
    p.add_argument("--patch", type=int, nargs=3, metavar=("Z", "Y", "X"), default=(32, 64, 64))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--out", type=Path, default=None, help="JSON with every repetition")
    args = p.parse_args(argv)
    import torch

    from benchmarks.common import median, timed
    from benchmarks.rows.data_pipeline import rotate
    from c2fnas_auto.nas.execution import ExecutionOptions
    from c2fnas_auto.utils.io import atomic_write_json

    patch = tuple(args.patch)
    torch.set_num_threads(args.threads)
    result: dict = {"patch": list(patch), "batch": 2, "threads": args.threads, "torch": torch.__version__,
                    "loadavg_start": list(os.getloadavg()), "widths": {}}
    for base in args.widths:
        variants = {f"{prec}_{layout}": stepper(base, patch, ExecutionOptions(precision=prec,
                                                                            channels_last=layout == "ndhwc"))
                    for prec in ("fp32", "bf16") for layout in ("ncdhw", "ndhwc")}
        for step in variants.values():
            step()
            step()  # warm-up: first-call allocations and kernel choices
        row = rotate({k: (lambda s=step: timed(s)[0]) for k, step in variants.items()}, args.reps)
        ratios = {prec: median(row[f"{prec}_ndhwc"]) / median(row[f"{prec}_ncdhw"]) for prec in ("fp32", "bf16")}
        result["widths"][str(base)] = {"seconds": row, "ndhwc_over_ncdhw": ratios}
        print(f"base width {base}: " + ", ".join(f"{k} {median(v) * 1e3:.0f} ms" for k, v in row.items())
              + f"; NDHWC/NCDHW time fp32 {ratios['fp32']:.2f}, bf16 {ratios['bf16']:.2f}", flush=True)
    result["loadavg_end"] = list(os.getloadavg())
    if args.out:
        atomic_write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
