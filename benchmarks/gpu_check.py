"""python -m benchmarks.gpu_check [--dry-run] --workdir DIR --out FILE

The measurements a GPU machine is for, in one run of under 8 minutes (run it through
`benchmarks/gpu_check.sh`), all in one JSON file:

1. a Pancreas-sized synthetic CT task (96x320x320 voxels at 2.5x0.8x0.8 mm, 8 cases),
   planned at 8 GB;
2. training iterations per second of the plans' network (loader workers + step, AMP) with
   each augmentation backend, and the GPU utilisation sampled meanwhile (`nvidia-smi`);
3. CUDA peak memory of those steps against the cost model's `training_bytes`;
3b. the execution options (nas/execution.py) on the device backend: fp32, bf16, fp16 (the
   default), bf16 compiled, bf16 channels-last: it/s and peak memory vs the cost model
   (row 4b's and row 5's figures on CUDA);
3c. sliding-window prediction of one preprocessed case under the same options (row 2's);
3d. the per-op profile of one training step and one inference window (benchmarks/op_profile.py)
   at fp32 and bf16, grouped as in documentation/benchmarks.md;
4. a short `c2fnas_search` (successive halving over 2 rungs) and, from its report.json,
   the seconds per coarse evaluation, per rung-0 candidate and per supernet epoch at the
   default schedule, and the default budget's projected GPU-hours (row 6's figures, read
   by the same `report_speeds`).

`--dry-run` runs every part on the CPU at toy sizes, to check the script itself.
Results are written (atomically) after each part, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

TASK_ID = 97
TASK_NAME = "PancreasSized"
FINE_EPOCHS = 2  # supernet epochs of the short search


def search_args(device: str, iters: int, dry: bool = False) -> list[str]:
    """The short search: 2 topologies at 1 epoch, the better one at 2, a 2-epoch supernet.

    The dry run leaves out the repeats (noise, stand-alone; no figure here reads them): its time
    goes to checking every option above, not to training candidates again."""
    return ["-t", str(TASK_ID), "--coarse-candidates", "2", "--clusters", "2", "--min-epochs", "1", "--eta", "2",
            "--rungs", "2", "--population", "2", "--fine-epochs", str(FINE_EPOCHS), "--generations", "1",
            "--standalone-sample", "0", "--heldout-fraction", "0", "--iters-per-epoch", str(iters),
            "--device", device, "--seed", "0", "--overwrite", "--no-progress",
            *(["--noise-repeats", "0", "--standalone-repeats", "0"] if dry else [])]


def nvidia_smi() -> str | None:
    """The GPU's name, memory and driver, kept in the results file."""
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv"],
                              capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


class GpuSampler:
    """Polls `nvidia-smi` for utilisation (%) and memory (MiB) while a block runs."""

    def __init__(self, period_s: float = 0.25):
        self.period_s, self.samples, self._stop = period_s, [], threading.Event()
        self.available = shutil.which("nvidia-smi") is not None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                                      "--format=csv,noheader,nounits", "-i", "0"],
                                     capture_output=True, text=True, timeout=5).stdout.strip().split(",")
                self.samples.append((float(out[0]), float(out[1])))
            except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
                pass
            self._stop.wait(self.period_s)

    def __enter__(self):
        if self.available:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self.available:
            self._thread.join(timeout=10)

    def summary(self) -> dict:
        if not self.samples:
            return {"gpu_utilisation_mean": None, "note": "nvidia-smi not available" if not self.available else ""}
        util = [s[0] for s in self.samples]
        return {"gpu_utilisation_mean": sum(util) / len(util), "gpu_utilisation_max": max(util),
                "gpu_memory_used_mib_max": max(s[1] for s in self.samples), "samples": len(util)}


def make_task(work: Path, dry: bool):
    from c2fnas_auto.data.synthetic import make_synthetic_task
    from c2fnas_auto.planning.pipeline import plan_and_preprocess

    for var, sub in (("C2FNAS_raw", "raw"), ("C2FNAS_preprocessed", "preprocessed"), ("C2FNAS_results", "results")):
        os.environ[var] = str(work / sub)
    # the dry run's toy task: a 16x32x32 patch at 4 base channels keeps its bf16 parts (emulated on
    # most CPUs, minutes at 32x64x64 x 8 channels) to seconds, and still passes every level's stride
    shape, spacing = ((16, 32, 32), (3.0, 1.0, 1.0)) if dry else ((96, 320, 320), (2.5, 0.8, 0.8))
    if not list((work / "raw").glob(f"Task*{TASK_ID}_{TASK_NAME}")):
        make_synthetic_task(work / "raw", task_id=TASK_ID, name=TASK_NAME, num_train=8, num_test=0, shape=shape,
                            spacing=spacing, seed=0)
    return plan_and_preprocess(TASK_ID, gpu_memory_gb=0.25 if dry else 8.0, base_channels=4 if dry else 32,
                               num_workers=min(8, os.cpu_count() or 1), progress=False)


# name -> ExecutionOptions fields of a measured option (channels_last off unless named)
OPTIONS = {"fp32": {"precision": "fp32"}, "bf16": {"precision": "bf16"}, "fp16": {"precision": "fp16"},
           "bf16_compile": {"precision": "bf16", "compile": True},
           "bf16_channels_last": {"precision": "bf16", "channels_last": True},
           # the CUDA default (fp16) in NDHWC: decides whether channels-last, the CPU default,
           # should be CUDA's too (off there until measured)
           "fp16_channels_last": {"precision": "fp16", "channels_last": True}}


def training_speed(plans, pre_dir: Path, backend: str, device, iterations: int, workers: int,
                   warmup: int = 3, execution=None, compiler=None) -> dict:
    """Iterations per second of our loader and `train_step` and the peak CUDA memory against the
    cost model's; `execution` None: the device's precision, NCDHW, not compiled."""
    import torch

    from c2fnas_auto.nas.cost import estimate_cost
    from c2fnas_auto.nas.execution import ExecutionOptions, prepare_network
    from c2fnas_auto.nas.network import build_network
    from c2fnas_auto.training.dataloader import load_cases, make_batch_iterator
    from c2fnas_auto.training.loop import StepContext, train_step
    from c2fnas_auto.training.loss import DeepSupervisionLoss
    from c2fnas_auto.training.schedule import build_optimizer
    from c2fnas_auto.training.splits import fold_case_ids

    torch.manual_seed(0)
    config = plans.network_config()
    execution = execution or ExecutionOptions(channels_last=False)
    net = prepare_network(build_network(plans.genotype, config).to(device), execution,
                          **({"compiler": compiler} if compiler else {}))
    ctx = StepContext(net, build_optimizer(net), DeepSupervisionLoss(), device, execution=execution)
    train_ids, _ = fold_case_ids(pre_dir, 0)
    batches = make_batch_iterator(load_cases(pre_dir, train_ids), plans.patch_size, plans.batch_size, seed=0,
                                  num_workers=workers, augmentation=backend, device=device)
    cuda = device.type == "cuda"
    for _ in range(warmup):  # warm-up: workers start, cuDNN picks its algorithms
        train_step(ctx, next(batches))
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with GpuSampler() as gpu:
        t0 = time.perf_counter()
        for _ in range(iterations):
            train_step(ctx, next(batches))
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
    cost = estimate_cost(plans.genotype, config, plans.patch_size, batch_size=plans.batch_size,
                         amp=ctx.precision != "fp32")
    peak = torch.cuda.max_memory_allocated() if cuda else None
    return {"backend": backend, "precision": ctx.precision, "compile": execution.compile,
            "channels_last": execution.channels_last,
            "iterations": iterations, "workers": workers,
            "iterations_per_second": iterations / seconds, "cuda_peak_bytes": peak,
            "cost_model_training_bytes": int(cost.training_bytes),
            "peak_over_cost_model": (peak / cost.training_bytes) if peak else None, **gpu.summary()}


def option_execution(name: str):
    """The `ExecutionOptions` of the option `name` in `OPTIONS`."""
    from c2fnas_auto.nas.execution import ExecutionOptions

    return ExecutionOptions(**{"channels_last": False, **OPTIONS[name]})


def _supported(name: str, device) -> str | None:
    """Why an option cannot run on this device (None: it can)."""
    from c2fnas_auto.nas.execution import ExecutionError, check_precision

    try:
        check_precision(OPTIONS[name]["precision"], device)
    except ExecutionError as exc:
        return str(exc)
    return None


def dry_compiler(fn):
    """The dry run's torch.compile: dynamo traces as on the GPU, without inductor's minutes of C++ builds."""
    import torch

    return torch.compile(fn, backend="eager")


def sliding_window_speed(plans, pre_dir: Path, device, name: str, repeats: int = 2, compiler=None,
                         warmup: bool = True) -> dict:
    """Seconds to predict one preprocessed case (no mirroring, 2 tiles per forward) with an option.
    `warmup` False (the dry run) times the first call, compilation included."""
    import torch

    from c2fnas_auto.inference.sliding_window import sliding_window_predict
    from c2fnas_auto.nas.execution import prepare_network
    from c2fnas_auto.nas.network import build_network
    from c2fnas_auto.preprocessing.storage import load_case
    from c2fnas_auto.training.splits import fold_case_ids

    torch.manual_seed(0)
    execution = option_execution(name)
    net = prepare_network(build_network(plans.genotype, plans.network_config()).to(device), execution,
                          **({"compiler": compiler} if compiler else {}))
    _, val_ids = fold_case_ids(pre_dir, 0)
    data, _, _ = load_case(pre_dir, val_ids[0], mmap=False)
    data = torch.from_numpy(data.astype("float32"))

    def once() -> float:
        t0 = time.perf_counter()
        sliding_window_predict(net, data, plans.patch_size, plans.num_classes, mirror_axes=None, device=device,
                               execution=execution, progress=False)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    if warmup:
        once()  # warm-up: compilation, cuDNN algorithm choice
    seconds = [once() for _ in range(repeats)]
    return {"option": name, "case_shape": list(data.shape), "seconds": seconds, "best_seconds": min(seconds)}


def op_profiles(plans, pre_dir: Path, device, precisions: tuple[str, ...]) -> dict:
    """The per-op groups of one training step and one inference window, ours at each precision."""
    from benchmarks.op_profile import markdown, our_side, profiled
    from c2fnas_auto.nas.execution import ExecutionOptions

    out: dict = {"device": device.type, "conditions": "GPU check, machine otherwise idle", "sides": {}}
    for precision in precisions:
        step, window = our_side(plans, pre_dir, tuple(plans.patch_size), plans.batch_size, device,
                                ExecutionOptions(precision=precision))
        out["sides"][f"ours_{precision}"] = {
            what: dict(zip(("groups", "wall_seconds"), profiled(fn, device.type))) for what, fn in
            (("step", step), ("window", window))}
    out["markdown"] = markdown(out)
    return out


def short_search(work: Path, device: str, dry: bool) -> dict:
    from c2fnas_auto import paths
    from c2fnas_auto.utils.io import load_json

    from benchmarks.rows.search_cost import report_speeds

    iters = 2 if dry else 50
    t0 = time.perf_counter()
    rc = subprocess.run([sys.executable, "-m", "c2fnas_auto.cli.search", *search_args(device, iters, dry)],
                        env=os.environ.copy()).returncode
    wall = time.perf_counter() - t0
    report_file = paths.search_results_dir(paths.task_name_from_id(TASK_ID)) / "report.json"
    out = {"returncode": rc, "wall_seconds": wall, "iters_per_epoch": iters, "report": str(report_file)}
    if rc != 0 or not report_file.is_file():
        return out
    report = load_json(report_file, "search report")
    out.update({"compute_seconds": report.get("compute_seconds"),
                "projection": report.get("projection_for_default_budget"), **report_speeds(report)})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="CPU, toy sizes: checks the script, measures nothing")
    p.add_argument("--workdir", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--iterations", type=int, default=None,
                   help="timed iterations per backend (default 30, half that per option; dry run: 2, one per option)")
    args = p.parse_args(argv)
    import torch

    from c2fnas_auto.paths import preprocessed_dir
    from c2fnas_auto.utils.io import atomic_write_json

    dev = torch.device("cpu" if args.dry_run else "cuda")
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible to torch (use --dry-run to check the script on a CPU)")
        return 2
    result: dict = {"device": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu (dry run)",
                    "torch": torch.__version__, "dry_run": args.dry_run, "nvidia_smi": nvidia_smi()}
    t0 = time.perf_counter()
    plans = make_task(args.workdir, args.dry_run)
    pre = preprocessed_dir(plans.task_name)
    result["task"] = {"patch": plans.patch_size, "batch": plans.batch_size,
                      "estimated_memory_gb": plans.estimated_memory_gb, "seconds": time.perf_counter() - t0}
    atomic_write_json(args.out, result)
    print(f"task ready: patch {plans.patch_size}, batch {plans.batch_size} ({result['task']['seconds']:.0f} s)",
          flush=True)
    iterations = args.iterations or (2 if args.dry_run else 30)
    workers = 0 if args.dry_run else min(8, max(1, (os.cpu_count() or 2) - 2))
    result["training"] = []
    for backend in ("device", "batchgenerators"):
        row = training_speed(plans, pre, backend, dev, iterations, workers, warmup=1 if args.dry_run else 3)
        result["training"].append(row)
        atomic_write_json(args.out, result)
        print(f"{backend}: {row['iterations_per_second']:.2f} it/s, GPU util {row['gpu_utilisation_mean']}, "
              f"peak {row['cuda_peak_bytes']} B vs cost model {row['cost_model_training_bytes']} B", flush=True)
    compiler = dry_compiler if args.dry_run else None
    # the dry run keeps its time down: the options that exercise every code path (fp16's refusal on a CPU),
    # each one step without warm-up (CPUs without bf16 units emulate it: seconds per step even at toy sizes)
    option_iterations = 1 if args.dry_run else max(2, iterations // 2)
    option_names = ("fp16", "bf16_compile", "bf16_channels_last") if args.dry_run else tuple(OPTIONS)
    result["training_options"] = []
    for name in option_names:
        why = _supported(name, dev)
        row = {"option": name, "skipped": why} if why else {"option": name, **training_speed(
            plans, pre, "device", dev, option_iterations, workers, warmup=0 if args.dry_run else 3,
            execution=option_execution(name), compiler=compiler)}
        result["training_options"].append(row)
        atomic_write_json(args.out, result)
        print(f"training {name}: {_fmt(row.get('iterations_per_second'))} it/s, peak {row.get('cuda_peak_bytes')} B "
              f"vs cost model {row.get('cost_model_training_bytes')} B{' (' + why + ')' if why else ''}", flush=True)
    result["sliding_window"] = []
    for name in option_names:
        why = _supported(name, dev)
        row = {"option": name, "skipped": why} if why else sliding_window_speed(
            plans, pre, dev, name, repeats=1 if args.dry_run else 2, compiler=compiler, warmup=not args.dry_run)
        result["sliding_window"].append(row)
        atomic_write_json(args.out, result)
        print(f"sliding window {name}: {_fmt(row.get('best_seconds'))} s", flush=True)
    result["op_profile"] = op_profiles(plans, pre, dev, ("fp32",) if args.dry_run else ("fp32", "bf16"))
    atomic_write_json(args.out, result)
    print(result["op_profile"]["markdown"], flush=True)
    result["search"] = short_search(args.workdir, dev.type, args.dry_run)
    atomic_write_json(args.out, result)
    s = result["search"]
    print(f"search: rc {s['returncode']}, {s['wall_seconds']:.0f} s wall, per coarse evaluation "
          f"{_fmt(s.get('seconds_per_coarse_candidate'))} s, per rung-0 candidate at the default schedule "
          f"{_fmt(s.get('seconds_per_default_coarse_candidate'))} s, per supernet epoch (default iterations) "
          f"{_fmt(s.get('seconds_per_supernet_epoch'))} s, default budget {_fmt(s.get('projected_total_hours'))} "
          f"hours ({s['iters_per_epoch']} iterations per epoch here)", flush=True)
    if s["returncode"] != 0:
        print(f"gpu_check: the short search exited {s['returncode']}")
        return 1
    print(f"results: {args.out}")
    return 0


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.1f}"


if __name__ == "__main__":
    sys.exit(main())
