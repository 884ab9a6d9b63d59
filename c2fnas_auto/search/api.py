"""`run_search`: both stages, state, report, plots, and the winner into the plans.

The stages run in `search_core` (`core.py`); this module wires them to the task: its plans,
held-out cases, devices and torchrun workers, then writes the winner into the plans.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
from typing import Any

from c2fnas_auto.errors import C2FNASError
from c2fnas_auto.nas.execution import check_precision
from c2fnas_auto.nas.plot import plot_genotype
from c2fnas_auto.paths import preprocessed_dir, search_results_dir, task_name_from_id
from c2fnas_auto.planning.pipeline import PLANS_FILE
from c2fnas_auto.planning.plans import Plans
from c2fnas_auto.preprocessing.provenance import check_arrays_match_plans
from c2fnas_auto.preprocessing.storage import list_dataset_cases
from c2fnas_auto.search.budgeting import resolve_budget
from c2fnas_auto.search.core import search_core, write_outputs
from c2fnas_auto.search.files import GENOTYPE_FILE, GENOTYPE_PNG
from c2fnas_auto.search.heldout import heldout_cases
from c2fnas_auto.search.old_folders import adopt_old_folder
from c2fnas_auto.search.plans_writer import winner_genotype, winner_network, write_into_plans
from c2fnas_auto.search.real_training import rank_device, real_hooks
from c2fnas_auto.search.run import SearchRun
from c2fnas_auto.search.settings import SearchSettings
from c2fnas_auto.search.state import SearchState
from c2fnas_auto.utils.distributed import DistContext, init_distributed


def run_search(task: str | int, settings: SearchSettings, run: SearchRun | None = None,
               device: str | None = None) -> SearchState:
    """`c2fnas_search -t TASK`: search on the task's fold 0 (held-out cases removed), write
    the winner into its plans.json and `search_results_dir(task)/genotype.json`; returns
    the final state. Several workers: torchrun ranks, and/or later processes with
    `run.join`. `run.dist` is ignored: the workers' group is opened here."""
    run = run or SearchRun()
    settings.validate()
    task_name = task_name_from_id(task)
    pre = preprocessed_dir(task_name)
    plans_path = pre / PLANS_FILE
    if not plans_path.is_file():
        raise C2FNASError(f"{plans_path}: no plans for task {task} (run c2fnas_plan_and_preprocess -t {task} first)")
    plans = Plans.load(plans_path)
    check_arrays_match_plans(pre, plans, task_name, list_dataset_cases(pre))  # never search on stale arrays
    search_dir = search_results_dir(task_name)
    # the other ranks wait in the one broadcast while rank 0 opens (or clears) the search's storage
    dist = DistContext() if run.join else init_distributed("cuda" if (device or "").startswith("cuda") else "cpu",
                                                       timeout=datetime.timedelta(minutes=30))
    moved = adopt_old_folder(task_name, search_dir) if (run.resume and dist.is_main and not run.join) else ""
    try:
        dev = rank_device(device, dist)
        check_precision(settings.execution.precision, dev)  # e.g. fp16 on a CPU: refused before anything runs
        heldout = heldout_cases(task_name, pre, settings.heldout_fraction, settings.seed)
        budget = resolve_budget(settings, plans)
        hooks = real_hooks(plans, pre, settings, device=dev, search_dir=search_dir, heldout=heldout,
                           progress=run.progress and dist.is_main, budget=budget[0])
        plans_info = {"patch_size": list(plans.patch_size), "batch_size": int(plans.batch_size),
                      "network": plans.network.to_dict(), "gpu_memory_gb": float(plans.gpu_memory_gb)}
        run = dataclasses.replace(run, dist=dist)
        state = search_core(search_dir, task_name, settings, hooks, run=run, plans_info=plans_info,
                            heldout=heldout.to_dict(), budget=budget)
        if dist.is_main and not run.join:
            genotype = winner_genotype(state, plans, settings)
            genotype.save(search_dir / GENOTYPE_FILE)
            new_plans, how = write_into_plans(plans_path, genotype, winner_network(state))
            plot_genotype(genotype, search_dir / GENOTYPE_PNG, cell_style=plans.network.cell_style,
                          title_extra=f"{task_name}: fine Dice {(state.winner or {}).get('fine_score', math.nan):.3f}")
            extra: dict[str, Any] = {"plans": {"file": str(plans_path), "refit": how,
                                               "patch_size": list(new_plans.patch_size),
                                               "batch_size": int(new_plans.batch_size),
                                               "estimated_memory_gb": float(new_plans.estimated_memory_gb)},
                                     "genotype": genotype.to_dict(), "genotype_file": str(search_dir / GENOTYPE_FILE),
                                     "world_size": dist.world_size}
            if moved:
                extra["moved_from_old_location"] = moved
            write_outputs(search_dir, state, hooks, extra)
        return state
    finally:
        dist.close()
