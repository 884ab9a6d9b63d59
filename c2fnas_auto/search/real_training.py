"""The real `SearchHooks`: candidates trained and scored with `training.api` on the task's cases."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from c2fnas_auto.search.coarse import TrainingContext, make_coarse_evaluator
from c2fnas_auto.search.files import SUPERNET_FILE
from c2fnas_auto.search.fine import make_fine_evaluator, train_supernet
from c2fnas_auto.search.heldout import search_cases
from c2fnas_auto.search.settings import SearchHooks, SearchSettings
from c2fnas_auto.utils.device import resolve_device
from c2fnas_auto.utils.distributed import DistContext


def rank_device(device: str | None, dist: DistContext):
    dev = resolve_device(device)
    if dev.type == "cuda" and dist.enabled:
        dev = torch.device("cuda", dist.local_rank)
    return dev


def real_hooks(plans: Any, preprocessed: Path, settings: SearchSettings, device: Any,
               search_dir: Path, heldout: Any, progress: bool = True, budget: Any = None) -> SearchHooks:
    """Coarse: `fit` from scratch + `score_cases`; fine: supernet with shared weights;
    stand-alone: an op choice trained from scratch like a coarse candidate. All train on
    the fold's training cases and score on its selection cases, held-out cases removed."""
    train_ids, val_ids = search_cases(preprocessed, settings.fold, heldout)
    ctx = TrainingContext(plans=plans, preprocessed_dir=preprocessed, train_ids=list(train_ids),
                          val_ids=list(val_ids), device=device, seed=settings.seed,
                          iters_per_epoch=settings.iters_per_epoch, execution=settings.execution,
                          budget=budget if budget is not None and budget.active else None)
    evaluate = make_coarse_evaluator(ctx, settings.min_epochs)
    return SearchHooks(
        coarse_evaluate=evaluate,
        train_supernet=lambda levels: train_supernet(levels, ctx, settings.fine_epochs, search_dir / SUPERNET_FILE,
                                                     progress=progress, warmup=settings.supernet_warmup),
        fine_evaluator=lambda supernet: make_fine_evaluator(supernet, ctx),
        standalone_evaluate=evaluate,
        pricing=ctx.pricing(),
        use_width=lambda m: setattr(ctx, "width_multiplier", m),
        describe={"device": str(device), "execution": ctx.answer_fields(), "fold": settings.fold,
                  "num_train_cases": len(train_ids),
                  "num_selection_cases": len(val_ids), "selection_cases": list(val_ids)})
