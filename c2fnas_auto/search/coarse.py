"""Coarse stage, real evaluation: train one topology from scratch, score it on the selection cases.

Candidates are built at the plans' network width and trained at the plans' patch and
batch size (no shrunken proxy, whose ranking need not be the full network's), all with the
same seed so scores compare.
Anything over the plans' memory budget is skipped by the cost model before training.
A candidate whose training did not start (training/start_check.py: no foreground ever
predicted, loss flat) is retrained once with a fresh init seed, so the stage ranks
topologies rather than unlucky initial weights; its record says so (`restarted`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from c2fnas_auto.nas.budget import Pricing, scale_widths
from c2fnas_auto.nas.cost import estimate_cost
from c2fnas_auto.nas.execution import ExecutionOptions
from c2fnas_auto.nas.genotype import Genotype
from c2fnas_auto.nas import network as nas_network  # called through the module: the tests' seam
from c2fnas_auto.search.runner import Evaluate, Proposal
from c2fnas_auto.training import api as training_api  # called as training_api.fit: the tests' seam
from c2fnas_auto.training.start_check import StartMonitor

GIB = 1024 ** 3
# added to the search seed for the one retraining of a candidate that did not start
RESTART_SEED_OFFSET = 1000


@dataclass
class TrainingContext:
    """What every real candidate evaluation needs; built once per search."""

    plans: Any  # planning.plans.Plans
    preprocessed_dir: Path
    train_ids: list[str]
    val_ids: list[str]
    device: torch.device
    seed: int
    iters_per_epoch: int
    execution: ExecutionOptions = ExecutionOptions()  # how candidates run (nas/execution.py)
    budget: Any = None  # nas.budget.CostBudget both stages screen against (None: memory only)
    width_multiplier: float | None = None  # equal-cost search: the winner's widths, for the stages after the coarse

    def answer_fields(self) -> dict[str, Any]:
        """How this worker ran a candidate, kept in its record: workers (and a resumed run) may differ."""
        return self.execution.resolved(self.device).to_dict()

    @property
    def memory_budget_bytes(self) -> float:
        return float(self.plans.gpu_memory_gb) * GIB

    def genotype(self, p: Proposal):
        return Genotype(levels=list(p.levels), ops=list(p.ops)).validate()

    def network_config(self, p: Proposal | None = None):
        """The plans' network, its widths scaled by the proposal's multiplier (else the context's)."""
        m = p.width_multiplier if p is not None and p.width_multiplier is not None else self.width_multiplier
        config = self.plans.network_config()
        return config if m is None else scale_widths(config, m)

    def pricing(self):
        """The cost model at these plans (nas.budget.Pricing), for the search's budget checks."""
        return Pricing(self.plans.network_config(), tuple(int(x) for x in self.plans.patch_size),
                       int(self.plans.batch_size))

    def cost(self, genotype, config=None):
        return estimate_cost(genotype, config or self.plans.network_config(), list(self.plans.patch_size),
                             batch_size=int(self.plans.batch_size))

    def cost_fields(self, cost) -> dict[str, Any]:
        return {"params": int(cost.params), "flops": float(cost.flops), "training_bytes": float(cost.training_bytes)}

    def screen(self, p: Proposal, max_gflops: float | None = None) -> tuple[Any, dict[str, Any], str]:
        """Genotype, cost fields and a skip reason ('' when it may be evaluated): the checks
        both stages make before spending any training or scoring on a candidate."""
        genotype = self.genotype(p)
        cost = self.cost(genotype, self.network_config(p))
        reason = self.over_memory(cost)
        if not reason and self.budget is not None:
            reason = self.budget.reason(cost.params, cost.flops)
        if not reason and max_gflops is not None and cost.flops / 1e9 > max_gflops:
            reason = f"{cost.flops / 1e9:.1f} GFLOPs > --max-gflops {max_gflops}"
        return genotype, self.cost_fields(cost), reason

    def over_memory(self, cost) -> str:
        """A reason string when the candidate does not fit the plans' GPU memory, else ''."""
        if cost.training_bytes > self.memory_budget_bytes:
            return (f"estimated training memory {cost.training_bytes / GIB:.2f} GiB > "
                    f"budget {self.plans.gpu_memory_gb} GiB")
        return ""


def oom_answer(out: dict[str, Any], seconds: float, during: str) -> dict[str, Any]:
    """A candidate that ran out of CUDA memory although the cost model let it through:
    recorded as skipped (with the estimate), so the search goes on."""
    return {**out, "status": "skipped", "score": None, "seconds": seconds,
            "reason": f"CUDA out of memory during {during} (the estimate was "
                      f"{out['training_bytes'] / GIB:.2f} GiB)"}


def make_coarse_evaluator(ctx: TrainingContext, epochs: int) -> Evaluate:
    """`evaluate(proposal)`: cost check, then `fit` on the search's training cases for
    `proposal.epochs` (default `epochs`) and `score_cases` on its selection cases."""
    def evaluate(p: Proposal) -> dict[str, Any]:
        t0 = time.perf_counter()
        n_epochs = int(p.epochs) if p.epochs is not None else epochs
        genotype, out, reason = ctx.screen(p)
        if reason:
            return {**out, "status": "skipped", "score": None, "reason": reason, "seconds": 0.0}
        try:
            network, losses, restarted = train_started(genotype, ctx, n_epochs, ctx.network_config(p), p.seed)
            t1 = time.perf_counter()
            scores = training_api.score_cases(network, ctx.plans, ctx.preprocessed_dir, ctx.val_ids, ctx.device,
                                 execution=ctx.execution)
            t2 = time.perf_counter()
        except torch.cuda.OutOfMemoryError:  # the cost model underestimated: record it, go on
            return oom_answer(out, time.perf_counter() - t0, "training")
        finally:
            network = None
            if torch.device(ctx.device).type == "cuda":
                torch.cuda.empty_cache()
        if p.width_multiplier is not None:
            out["width_multiplier"] = p.width_multiplier
        return {**out, **ctx.answer_fields(), "score": float(scores["mean_fg_dice"]),
                "seconds": time.perf_counter() - t0, "train_seconds": t1 - t0, "score_seconds": t2 - t1,
                "train_iterations": (1 + restarted) * n_epochs * ctx.iters_per_epoch,
                "final_loss": float(losses[-1]) if losses else None, "restarted": restarted}

    return evaluate


def train_started(genotype, ctx: TrainingContext, epochs: int, config=None,
                  seed: int | None = None) -> tuple[Any, list[float], int]:
    """Build (at `config`, default the plans' network) and `fit` the candidate from the search
    seed (the same initial weights' generator state for every candidate; `seed` for a repeat
    of the noise check); if it did not start, once more from a fresh seed.
    Returns (network, losses, restarts)."""
    seed_base = seed
    for attempt in (0, 1):
        seed = (ctx.seed if seed_base is None else seed_base) + attempt * RESTART_SEED_OFFSET
        torch.manual_seed(seed)
        network = nas_network.build_network(genotype, config or ctx.plans.network_config())
        monitor = StartMonitor()
        losses = training_api.fit(network, ctx.plans, ctx.preprocessed_dir, ctx.train_ids, epochs=epochs,
                     iters_per_epoch=ctx.iters_per_epoch, device=ctx.device, seed=seed, progress=False,
                     monitor=monitor, execution=ctx.execution)
        if attempt == 1 or not monitor.not_started(final=True):
            return network, losses, attempt
        del network
    raise AssertionError("unreachable")
