"""The checks both stages make before training or scoring a candidate (no training here)."""

from __future__ import annotations

import torch

from c2fnas_auto.nas.genotype import reference_genotype
from c2fnas_auto.search.coarse import TrainingContext
from c2fnas_auto.search.runner import Proposal


def _ctx(plans) -> TrainingContext:
    return TrainingContext(plans=plans, preprocessed_dir=None, train_ids=[], val_ids=[],
                           device=torch.device("cpu"), seed=0, iters_per_epoch=1)


def test_screen_passes_within_budget_and_names_the_gflops_limit(tiny_task):
    ref = reference_genotype()
    p = Proposal(levels=tuple(ref.levels), ops=tuple(ref.ops))
    ctx = _ctx(tiny_task.plans)
    genotype, fields, reason = ctx.screen(p)
    assert reason == "" and genotype.levels == ref.levels
    assert fields["params"] > 0 and fields["flops"] > 0 and fields["training_bytes"] > 0
    _, _, reason = ctx.screen(p, max_gflops=fields["flops"] / 1e9 / 2)
    assert "--max-gflops" in reason
    _, _, reason = ctx.screen(p, max_gflops=fields["flops"] / 1e9 * 2)
    assert reason == ""


def test_screen_skips_over_memory(tiny_task):
    plans = tiny_task.plans.copy()
    plans.gpu_memory_gb = 1e-6
    ref = reference_genotype()
    _, _, reason = _ctx(plans).screen(Proposal(levels=tuple(ref.levels), ops=tuple(ref.ops)))
    assert "estimated training memory" in reason and "budget" in reason
