"""The search's winner as a genotype with its provenance, written into the task's plans."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

from c2fnas_auto.nas.budget import scale_widths
from c2fnas_auto.nas.config import NetworkConfig
from c2fnas_auto.nas.genotype import Genotype
from c2fnas_auto.planning.planner import refit_plans
from c2fnas_auto.planning.plans import Plans
from c2fnas_auto.search.settings import SearchSettings
from c2fnas_auto.search.state import SearchState


def winner_genotype(state: SearchState, plans: Any, settings: SearchSettings):
    """The winner as a Genotype carrying its provenance (documentation/explanation/search_space.md), so a plans file
    says where its network came from."""
    w = state.winner or {}
    provenance = {
        "source": "c2fnas_search",
        "source_task": state.task_name,
        "gpu_memory_gb": state.plans.get("gpu_memory_gb", float(plans.gpu_memory_gb)),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "fine_score": w.get("fine_score"),
        "coarse_score": w.get("coarse_score"),
        "coarse_epochs": w.get("coarse_epochs"),
        "heldout": {k: state.heldout.get(k) for k in ("source", "case_ids", "seed", "fraction")},
        "searched_patch_size": state.plans.get("patch_size", list(plans.patch_size)),
        "searched_batch_size": state.plans.get("batch_size", int(plans.batch_size)),
        "settings": settings.to_dict(),
        "width_multiplier": w.get("width_multiplier"),
        "budget": state.budget or None,
    }
    return Genotype(levels=w["levels"], ops=w["ops"], provenance=provenance).validate()


def winner_network(state: SearchState):
    """The network the equal-cost search chose widths for: the searched plans' network with its
    widths scaled by the winner's multiplier (None when the widths were the plans' own). Read from
    the state, not from plans.json, so writing the winner twice never scales twice."""
    m = (state.winner or {}).get("width_multiplier")
    if m is None or not state.plans.get("network"):
        return None
    return scale_widths(NetworkConfig.from_dict(state.plans["network"]), m)


def write_into_plans(plans_path: Path, genotype: Any, network: Any = None) -> tuple[Any, str]:
    """Put the genotype (and `network`, the widths it was searched at) into the source task's
    plans with patch/batch refitted to its budget."""
    plans = Plans.load(plans_path)
    if network is not None:
        plans.network = network
    new = refit_plans(plans, genotype)
    new.save(plans_path)
    return new, "patch/batch refitted by planning.planner.refit_plans"
