"""Fine stage, real evaluation: a single-path supernet on the winning topology.

Training samples one path per step (memory of one path, SPOS style): first one op for
the whole network (the warm-up share), then one op per cell uniformly; the sampler's
generator is seeded so a rerun trains the same paths. The
trained weights go to `<search results>/supernet.pth` atomically; a resumed search loads them
instead of training again. Op choices are then scored with the shared weights.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import torch

from c2fnas_auto.errors import C2FNASError
from c2fnas_auto.nas.execution import prepare_network
from c2fnas_auto.nas import supernet as nas_supernet  # called through the module: the tests' seam
from c2fnas_auto.search.coarse import RESTART_SEED_OFFSET, TrainingContext, oom_answer
from c2fnas_auto.search.runner import Evaluate, Proposal
from c2fnas_auto.training import api as training_api  # called as training_api.fit: the tests' seam
from c2fnas_auto.training.start_check import StartMonitor
from c2fnas_auto.utils.io import atomic_torch_save
from c2fnas_auto.utils.torch_files import load_torch_file


def train_supernet(levels: Sequence[int], ctx: TrainingContext, epochs: int, checkpoint: Path,
                   progress: bool = True, warmup: float = 0.0) -> tuple[Any, dict]:
    """Build the supernet and train it, or load the finished weights from `checkpoint`.

    Returns (supernet, info) where info has epochs, seconds and losses. `warmup` is the
    share of steps that give all cells one op (see `Supernet.sampling_forward`). A checkpoint
    for another topology, epoch count or warm-up is an error (the state says what was run).
    Loading and training stay in one function: both build the same supernet and end in the same
    checkpoint, and the checks between them decide which one runs.
    """
    torch.manual_seed(ctx.seed)
    supernet = nas_supernet.build_supernet(list(levels), ctx.network_config())
    if checkpoint.exists():
        try:  # tensors and plain data only: a shared search folder cannot run code here
            saved = load_torch_file(checkpoint, "supernet checkpoint", trustable=False)
        except C2FNASError as exc:
            raise C2FNASError(f"{exc}; use --overwrite") from None
        if saved.get("width_multiplier") != ctx.width_multiplier:
            raise C2FNASError(f"{checkpoint}: supernet at width multiplier {saved.get('width_multiplier')}, expected "
                              f"{ctx.width_multiplier}; use --overwrite")
        if (list(saved.get("levels", [])) != list(levels) or saved.get("epochs") != epochs
                or float(saved.get("warmup", 0.0)) != float(warmup)):
            raise C2FNASError(f"{checkpoint}: supernet for levels {saved.get('levels')} / {saved.get('epochs')} "
                              f"epochs / warm-up {saved.get('warmup', 0.0)}, expected {list(levels)} / {epochs} / "
                              f"{warmup}; use --overwrite")
        supernet.load_state_dict(saved["state_dict"])
        prepare_network(supernet.to(ctx.device), ctx.execution)
        return supernet, {"epochs": epochs, "seconds": float(saved.get("seconds", 0.0)),
                          "losses": saved.get("losses", []), "restarted": int(saved.get("restarted", 0)),
                          "loaded": True}
    t0 = time.perf_counter()
    uniform_steps = int(round(warmup * epochs * ctx.iters_per_epoch))
    restarted = 0
    try:
        for attempt in (0, 1):  # a supernet that did not start is retrained once from a fresh seed
            seed = ctx.seed + attempt * RESTART_SEED_OFFSET
            if attempt:
                torch.manual_seed(seed)
                supernet = nas_supernet.build_supernet(list(levels), ctx.network_config())
            sampler = supernet.sampling_forward(seed=seed, uniform_steps=uniform_steps)  # seeded paths
            monitor = StartMonitor()
            losses = training_api.fit(supernet, ctx.plans, ctx.preprocessed_dir, ctx.train_ids, epochs=epochs,
                         iters_per_epoch=ctx.iters_per_epoch, device=ctx.device, seed=seed,
                         forward_fn=sampler, progress=progress, monitor=monitor,
                         execution=ctx.execution) if epochs > 0 else []
            restarted = attempt
            if not monitor.not_started(final=True):
                break
    except torch.cuda.OutOfMemoryError:  # no candidate to skip here: the stage cannot go on
        raise C2FNASError(f"CUDA out of memory while training the supernet on levels {list(levels)} at patch "
                          f"{list(ctx.plans.patch_size)} batch {ctx.plans.batch_size}; plan with a lower "
                          "--gpu-memory-gb (smaller patch) and rerun the search with --continue") from None
    seconds = time.perf_counter() - t0
    state_dict = {k: v.detach().cpu() for k, v in supernet.state_dict().items()}
    atomic_torch_save({"levels": list(levels), "epochs": epochs, "warmup": float(warmup), "seconds": seconds,
                       "width_multiplier": ctx.width_multiplier,
                       "losses": [float(x) for x in losses], "restarted": restarted, "state_dict": state_dict},
                      checkpoint)
    return supernet, {"epochs": epochs, "warmup": float(warmup), "uniform_steps": uniform_steps, "seconds": seconds,
                      "losses": [float(x) for x in losses], "restarted": restarted, "loaded": False}


def make_fine_evaluator(supernet: Any, ctx: TrainingContext, max_gflops: float | None = None) -> Evaluate:
    """`evaluate(proposal)`: constraints from the cost model, then shared-weight Dice on the selection cases."""
    def evaluate(p: Proposal) -> dict[str, Any]:
        t0 = time.perf_counter()
        _, out, reason = ctx.screen(p, max_gflops)
        if reason:
            return {**out, "status": "skipped", "score": None, "reason": reason, "seconds": 0.0}
        ops = list(p.ops)
        try:
            scores = training_api.score_cases(supernet, ctx.plans, ctx.preprocessed_dir, ctx.val_ids, ctx.device,
                                 forward_fn=lambda net, x: net(x, ops), execution=ctx.execution)
        except torch.cuda.OutOfMemoryError:  # this op choice needs more than the estimate: skip it
            if torch.device(ctx.device).type == "cuda":
                torch.cuda.empty_cache()
            return oom_answer(out, time.perf_counter() - t0, "shared-weight scoring")
        return {**out, **ctx.answer_fields(), "score": float(scores["mean_fg_dice"]),
                "seconds": time.perf_counter() - t0}

    return evaluate
