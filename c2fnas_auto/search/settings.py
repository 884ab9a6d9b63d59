"""What a search is configured by: `SearchSettings`, the `SearchHooks` that touch training,
and the `Topologies` it chooses from."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from c2fnas_auto.errors import C2FNASError
from c2fnas_auto.nas.budget import CostBudget
from c2fnas_auto.nas.execution import EXECUTION_FIELDS, PRECISIONS, ExecutionOptions, flat_asdict
from c2fnas_auto.nas.genotype import OPS
from c2fnas_auto.nas.topology import enumerate_topologies, topology_distance, topology_neighbours
from c2fnas_auto.planning.budgets import BUDGET_NAMES
from c2fnas_auto.search.asha import Rungs, check_rungs
from c2fnas_auto.search.runner import Evaluate

# `EXECUTION_FIELDS` say how candidates run (nas/execution.py), not which ones are proposed:
# like the device, they may differ between workers and across a resume, so the resume check
# leaves them out
__all__ = ["EXECUTION_FIELDS", "SearchHooks", "SearchSettings", "Topologies", "default_topologies"]


@dataclass
class SearchSettings:
    """Every option that changes the search's decisions (the device and workers do not), and the
    execution options of its trainings and scorings (`execution`, stored under `EXECUTION_FIELDS`).
    Defaults: about one GPU-day on one modern GPU, see documentation/howto/search.md."""

    coarse_candidates: int = 81  # topologies trained at rung 0
    min_epochs: int = 4  # rung 0 budget; rung r trains min_epochs * eta**r epochs
    eta: int = 3
    rungs: int = 3
    clusters: int = 16
    population: int = 16
    fine_epochs: int = 500
    supernet_warmup: float = 0.5  # share of supernet steps with one op for all cells, before cell-wise paths
    generations: int = 20
    iters_per_epoch: int = 100
    seed: int = 0
    coarse_op: str = "3d"
    max_gflops: float | None = None
    tournament: int = 4
    standalone_sample: int = 6  # fine-stage op choices also trained stand-alone (0: off)
    heldout_fraction: float = 0.2  # carved from the training cases when there is no labelled imagesTs
    fold: int = 0
    execution: ExecutionOptions = ExecutionOptions()  # every candidate, the supernet and the stand-alone check
    # the cost budget both stages keep to (search/budgeting.py, documentation/howto/search.md)
    max_params: int | None = None
    budget: str | None = None  # "reference" / "nnunet": the limits priced from the plans
    budget_band: float | None = None  # candidates must use at least 1 - band of the budget
    equal_cost: bool = False  # coarse candidates' widths scaled to fill the budget
    # the noise check (search/noise.py): candidates trained again with a second seed
    noise_repeats: int = 3  # rung-0 candidates
    standalone_repeats: int = 2  # stand-alone op choices of the fine stage

    def validate(self) -> "SearchSettings":
        for name in ("coarse_candidates", "clusters", "population", "generations", "iters_per_epoch", "tournament"):
            if getattr(self, name) < 1:
                raise C2FNASError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be at least 1")
        for name in ("fine_epochs", "standalone_sample", "noise_repeats", "standalone_repeats"):
            if getattr(self, name) < 0:
                raise C2FNASError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be >= 0")
        check_rungs(self.min_epochs, self.eta, self.rungs)
        if not 0.0 <= self.supernet_warmup <= 1.0:
            raise C2FNASError(f"--supernet-warmup {self.supernet_warmup}: must be in [0, 1]")
        if not 0.0 <= self.heldout_fraction < 1.0:
            raise C2FNASError(f"--heldout-fraction {self.heldout_fraction}: must be in [0, 1)")
        if self.coarse_op not in OPS:
            raise C2FNASError(f"--coarse-op {self.coarse_op!r}: expected one of {', '.join(OPS)}")
        if self.max_gflops is not None and self.max_gflops <= 0:
            raise C2FNASError(f"--max-gflops {self.max_gflops}: must be positive")
        precision = self.execution.precision
        if precision is not None and precision not in PRECISIONS:
            raise C2FNASError(f"--precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
        self._validate_budget()
        return self

    def _validate_budget(self) -> None:
        if self.budget is not None and self.budget not in BUDGET_NAMES:
            raise C2FNASError(f"--budget {self.budget!r}: expected one of {', '.join(BUDGET_NAMES)}")
        if self.budget is not None and (self.max_params is not None or self.max_gflops is not None):
            raise C2FNASError(f"--budget {self.budget} sets the limits from the plans: drop --max-params / "
                              "--max-gflops, or drop --budget")
        CostBudget(self.max_params, self.max_gflops, self.budget_band)  # range checks, one-line errors
        limited = self.budget is not None or self.max_params is not None or self.max_gflops is not None
        if (self.equal_cost or self.budget_band is not None) and not limited:
            raise C2FNASError("--equal-cost and --budget-band need a budget: --max-params, --max-gflops or --budget")

    def schedule(self) -> Rungs:
        return check_rungs(self.min_epochs, self.eta, self.rungs)

    def to_dict(self) -> dict[str, Any]:
        """Flat, as the state, report and genotype provenance store the settings."""
        return json.loads(json.dumps(flat_asdict(self)))

    def decisions(self) -> dict[str, Any]:
        """The settings a resumed or joining worker must share (the execution options need not)."""
        return {k: v for k, v in self.to_dict().items() if k not in EXECUTION_FIELDS}


@dataclass
class SearchHooks:
    """The things that touch training; everything else is the same for fakes.
    Evaluators read the epochs to train from `Proposal.epochs` (coarse rung, stand-alone)."""

    coarse_evaluate: Evaluate
    train_supernet: Callable[[Sequence[int]], tuple[Any, dict]]  # levels -> (supernet, info)
    fine_evaluator: Callable[[Any], Evaluate]  # supernet -> evaluate
    standalone_evaluate: Evaluate | None = None  # trains an op choice from scratch (None: no tau check)
    describe: dict[str, Any] | None = None
    pricing: Any = None  # nas.budget.Pricing at the plans: the budget's checks (None: no budget can be kept)
    use_width: Callable[[float | None], None] | None = None  # the coarse winner's width multiplier, for training


@dataclass
class Topologies:
    topologies: list[tuple[int, ...]]
    neighbours: Callable[[tuple[int, ...]], Sequence[tuple[int, ...]]]
    distance: Callable[[tuple[int, ...], tuple[int, ...]], float]
    num_cells: int = 12
    op_choices: tuple[str, ...] = ("2d", "3d", "p3d")


def default_topologies() -> Topologies:
    return Topologies([tuple(t) for t in enumerate_topologies()],
                      lambda t: [tuple(n) for n in topology_neighbours(tuple(t))],
                      topology_distance, 12, tuple(OPS))
