"""python -m benchmarks.op_profile --quick | --full [--device cpu|cuda] [--sides ...] [--out FILE.json]

Where one training step and one inference window spend their time, per kind of operation,
for our plans' network (as row 4b trains it) and nnU-Net v2's (as its trainer trains it),
same patch and batch. torch.profiler records every aten op; each op's *self* time goes to
one group (so nested ops are not counted twice):

- a step is timed in phases (record_function ranges): forward, loss, backward, optimizer
  (gradient unscale and clipping, SGD step); the loss's and optimizer's ops go to "loss" and
  "optimizer" whatever they are;
- forward ops are grouped by the outermost aten op the Python code called (a conv3d and
  the mkldnn kernel under it are one "conv forward"), backward ops by the autograd node
  that ran them (ConvolutionBackward0 -> "conv backward");
- our axis-by-axis upsampling (`nas.ops.upsample_x2`: cat, lerp, stack) runs inside a named
  range, so its forward is "upsampling"; of its backward, the lerps' nodes are counted as
  upsampling (nothing else in either network lerps), its cat and stack nodes as copies.

On CUDA the groups hold device (kernel) time, on a CPU the CPU time. The table is printed
as markdown; the JSON holds the seconds per group and side. Figures depend on the load of
the machine: say under which load a table was taken.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

GROUPS = ("conv forward", "conv backward", "norm", "activation", "upsampling", "concatenation/copies", "loss",
          "optimizer", "compiled (fused) regions", "other (add, mul, allocation, engine)")
PHASES = ("forward", "loss", "backward", "optimizer")

_FORWARD_RULES = (
    ("conv forward", ("conv", "convolution", "mkldnn_convolution", "slow_conv3d")),
    ("norm", ("instance_norm", "batch_norm", "group_norm", "native_batch_norm", "layer_norm", "native_group_norm")),
    ("activation", ("relu", "relu_", "leaky_relu", "leaky_relu_", "threshold", "clamp_min", "gelu")),
    ("upsampling", ("upsample", "interpolate")),
    ("concatenation/copies", ("cat", "stack", "copy_", "clone", "contiguous", "to", "_to_copy", "flip",
                              "constant_pad_nd", "pad")),
)
_BACKWARD_RULES = (
    ("conv backward", ("Convolution", "MkldnnConvolution", "SlowConv")),
    ("norm", ("NativeBatchNorm", "BatchNorm", "InstanceNorm", "NativeGroupNorm", "GroupNorm")),
    ("activation", ("Relu", "Threshold", "LeakyRelu", "Gelu", "ClampMin")),
    ("upsampling", ("Upsample", "Lerp")),
    ("concatenation/copies", ("Cat", "Stack", "Clone", "Copy", "ToCopy", "Slice", "Flip", "ConstantPadNd")),
    ("loss", ("LogSoftmax", "Softmax", "NllLoss", "Nll")),
    ("compiled (fused) regions", ("CompiledFunction",)),
)
NODE_PREFIX = "autograd::engine::evaluate_function: "
UPSAMPLE_RANGE = "c2fnas::upsample_x2"  # = c2fnas_auto.nas.ops.UPSAMPLE_RANGE (kept import-free: see test)
NORM_RANGE = "c2fnas::instance_norm_ndhwc"  # = c2fnas_auto.nas.layout.NORM_RANGE (likewise)


def _aten_group(name: str) -> str | None:
    base = name.removeprefix("aten::")
    for group, stems in _FORWARD_RULES:
        if any(base == s or (s in ("conv", "upsample") and base.startswith(s)) for s in stems):
            return group
    return None


def _node_group(node: str) -> str:
    for group, stems in _BACKWARD_RULES:
        if any(node.startswith(s) for s in stems):
            return group
    return GROUPS[-1]


def classify(chain: list[str]) -> str:
    """The group of an op from its ancestry, innermost first (its own name included)."""
    phase = next((n[len("phase:"):] for n in chain if n.startswith("phase:")), None)
    if phase in ("loss", "optimizer"):
        return phase
    node = next((n[len(NODE_PREFIX):] for n in chain if n.startswith(NODE_PREFIX)), None)
    if node is not None:
        return _node_group(node)
    if any("Compiled" in n or n.startswith("Torch-Compiled") for n in chain):
        return "compiled (fused) regions"
    if UPSAMPLE_RANGE in chain:
        return "upsampling"
    if NORM_RANGE in chain:
        return "norm"
    for name in reversed(chain):  # the outermost aten op decides
        if name.startswith("aten::"):
            return _aten_group(name) or GROUPS[-1]
    return GROUPS[-1]


def grouped_seconds(prof, device_type: str) -> dict[str, float]:
    """Self time per group of one profiled region (kernel time on CUDA, CPU time elsewhere)."""
    out = {g: 0.0 for g in GROUPS}
    for e in prof.events():
        if device_type == "cuda":
            t = getattr(e, "self_device_time_total", None)
            t = getattr(e, "self_cuda_time_total", 0.0) if t is None else t
        else:
            t = e.self_cpu_time_total
        if not t:
            continue
        chain, p = [], e
        while p is not None:
            chain.append(p.name)
            p = p.cpu_parent
        out[classify(chain)] += t / 1e6
    return out


def profiled(fn: Callable[[], None], device_type: str, repeats: int = 1) -> tuple[dict[str, float], float]:
    """Groups (mean over `repeats` calls) and the wall seconds per call, after one warm-up call."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    fn()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device_type == "cuda" else [])
    sync = torch.cuda.synchronize if device_type == "cuda" else (lambda: None)
    sync()
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        sync()
        wall = (time.perf_counter() - t0) / repeats
    groups = {k: v / repeats for k, v in grouped_seconds(prof, device_type).items()}
    return groups, wall


def make_step(net, x, target, loss_fn, optimizer, device, execution=None, clip: float = 12.0):
    """One SGD step in phases, the same on both sides (both trainers clip at 12); `execution`
    gives the precision (None: fp32)."""
    import torch
    from torch.profiler import record_function

    from c2fnas_auto.nas.execution import autocast, grad_scaler

    precision = execution.precision if execution is not None and execution.precision else "fp32"
    scaler = grad_scaler(device, precision)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with record_function("phase:forward"), autocast(device, precision):
            out = net(x)
        with record_function("phase:loss"), autocast(device, precision):
            loss = loss_fn(out, target)
        with record_function("phase:backward"):
            scaler.scale(loss).backward()
        with record_function("phase:optimizer"):
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
            scaler.step(optimizer)
            scaler.update()
    return step


def make_window(net, x, device, execution=None):
    """One forward of `x` (the sliding window's tiles of one call) in eval mode, no autograd;
    `execution` gives the precision (None: fp32)."""
    import torch
    from torch.profiler import record_function

    from c2fnas_auto.nas.execution import autocast

    precision = execution.precision if execution is not None and execution.precision else "fp32"

    def window() -> None:
        net.eval()
        with torch.inference_mode(), record_function("phase:forward"), autocast(device, precision):
            net(x)
    return window


def our_side(plans, pre_dir, patch, batch, device, execution=None):
    """Our plans' network with deep supervision and our loss (row 4b's step), one real batch;
    `execution` None: fp32 in the device's default layout."""
    import torch

    from benchmarks.rows.data_pipeline import our_iterator
    from benchmarks.rows.train_step import our_network
    from c2fnas_auto.nas.execution import ExecutionOptions, prepare_network
    from c2fnas_auto.training.loss import DeepSupervisionLoss
    from c2fnas_auto.training.schedule import GRAD_CLIP, build_optimizer

    torch.manual_seed(0)
    net, config = our_network(plans)
    config.check_patch(patch)
    execution = execution or ExecutionOptions(precision="fp32")
    net = prepare_network(net.to(device), execution)
    b = next(our_iterator(pre_dir, patch, batch, "device"))
    x, y = b["data"].to(device), b["target"].to(device)
    net.train()
    step = make_step(net, x, y, DeepSupervisionLoss(), build_optimizer(net), device, execution, GRAD_CLIP)
    window = make_window(net, torch.randn(2, x.shape[1], *patch, device=device), device, execution)
    return step, window


def nnunet_side(ws, nn_task, patch, batch, device, execution=None):
    """nnU-Net's network, loss and optimiser from its trainer, one batch of its loader; only
    `execution`'s precision applies (nnU-Net's network is run as its trainer builds it)."""
    import torch

    from benchmarks.rows.data_pipeline import nnunet_trainer_for

    trainer = nnunet_trainer_for(ws, nn_task, patch, batch, deep_supervision=True)
    trainer.initialize()
    train_gen, _ = trainer.get_dataloaders()
    b = next(train_gen)
    net = trainer.network.to(device).train()
    x = b["data"].to(device)
    y = [t.to(device) for t in b["target"]] if isinstance(b["target"], list) else b["target"].to(device)
    step = make_step(net, x, y, trainer.loss, trainer.optimizer, device, execution, 12.0)
    forward = make_window(net, torch.randn(2, x.shape[1], *patch, device=device), device, execution)

    def window() -> None:  # nnU-Net predicts with deep supervision off (one output)
        net.decoder.deep_supervision = False
        try:
            forward()
        finally:
            net.decoder.deep_supervision = True
            net.train()
    return step, window


SIDES = {  # name -> our ExecutionOptions fields (None: nnU-Net; no precision: fp32)
    "ours": {}, "ours_ncdhw": {"channels_last": False}, "ours_bf16": {"precision": "bf16"},
    "ours_bf16_ncdhw": {"precision": "bf16", "channels_last": False}, "ours_compile": {"compile": True}, "nnunet": None,
}


def markdown(result: dict) -> str:
    """Two tables (training step, inference window): seconds and share per group and side."""
    lines = []
    for what in ("step", "window"):
        sides = [s for s in result["sides"] if what in result["sides"][s]]
        lines.append(f"\n{'One training step' if what == 'step' else 'One inference window (2 tiles)'} "
                     f"({result['device']}, {result['conditions']}), seconds (share):\n")
        lines.append("| group | " + " | ".join(sides) + " |")
        lines.append("|---|" + "---:|" * len(sides))
        for g in GROUPS:
            cells = []
            for s in sides:
                d = result["sides"][s][what]
                total = sum(d["groups"].values()) or 1.0
                cells.append(f"{d['groups'][g]:.3f} ({100 * d['groups'][g] / total:.0f}%)")
            if any(result["sides"][s][what]["groups"][g] > 0 for s in sides):
                lines.append(f"| {g} | " + " | ".join(cells) + " |")
        lines.append("| **sum of groups** | " + " | ".join(
            f"{sum(result['sides'][s][what]['groups'].values()):.3f}" for s in sides) + " |")
        lines.append("| wall (profiled) | " + " | ".join(
            f"{result['sides'][s][what]['wall_seconds']:.3f}" for s in sides) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.op_profile", description=__doc__.split("\n\n")[0])
    g = p.add_mutually_exclusive_group(required=True)
    for name in ("quick", "full", "tiny"):
        g.add_argument(f"--{name}", action="store_const", const=name, dest="profile")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--sides", nargs="+", choices=sorted(SIDES), default=["ours", "ours_ncdhw", "nnunet"])
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--repeats", type=int, default=1, help="profiled calls per side (mean)")
    p.add_argument("--conditions", default="", help="free text for the table's caption, e.g. 'under load'")
    p.add_argument("--workdir", type=Path, default=None, help="scratch folder (kept; default: temporary)")
    p.add_argument("--out", type=Path, default=None, help="JSON with every figure")
    args = p.parse_args(argv)
    import tempfile

    import torch

    from benchmarks.common import PROFILES
    from benchmarks.workspace import Workspace
    from c2fnas_auto.nas.execution import ExecutionOptions
    from c2fnas_auto.utils.io import atomic_write_json

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("op_profile: no CUDA device visible to torch")
        return 2
    device = torch.device(args.device)
    profile = PROFILES[args.profile]
    conditions = args.conditions or f"{torch.get_num_threads()} thread(s)"
    result: dict = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
                    "torch": torch.__version__, "profile": profile.name, "conditions": conditions,
                    "patch": list(profile.ts_patch), "batch": profile.ts_batch, "sides": {}}
    with tempfile.TemporaryDirectory(prefix="c2fnas-opprof-") as tmp:
        ws = Workspace(root=(args.workdir or Path(tmp)).resolve(), profile=profile)
        ws.root.mkdir(parents=True, exist_ok=True)
        plans, pre_dir = ws.ours_prepared(base_channels=profile.ts_base_channels)
        patch, batch = tuple(profile.ts_patch), profile.ts_batch
        for side in args.sides:
            opts = SIDES[side]
            if opts is None:
                step, window = nnunet_side(ws, ws.nnunet_prepared(), patch, batch, device)
            else:
                step, window = our_side(plans, pre_dir, patch, batch, device,
                                        ExecutionOptions(**{"precision": "fp32", **opts}))
            entry = {}
            for what, fn in (("step", step), ("window", window)):
                groups, wall = profiled(fn, device.type, args.repeats)
                entry[what] = {"groups": groups, "wall_seconds": wall}
            result["sides"][side] = entry
            print(f"{side}: step {entry['step']['wall_seconds']:.3f} s, window {entry['window']['wall_seconds']:.3f} s",
                  flush=True)
            if args.out:
                atomic_write_json(args.out, result)
    table = markdown(result)
    result["markdown"] = table
    if args.out:
        atomic_write_json(args.out, result)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
