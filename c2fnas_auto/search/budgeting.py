"""The search under a cost budget: which budget, which topologies, which candidates may run.

The limits come from the settings (`--max-params`, `--max-gflops`) or from the plans by name
(`--budget reference|nnunet`, `planning/budgets.py`). The cost model prices every candidate
before anything is trained (`nas/budget.py`): topologies outside the budget are removed before
the coarse stage proposes any, and every evaluator is wrapped so that a candidate outside it
is recorded as skipped instead of trained or scored. With `equal_cost`, each coarse candidate's
widths are scaled to fill the budget, so candidates are compared at equal cost; the coarse
winner's widths then carry into the supernet, the fine stage and the plans.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

from c2fnas_auto.errors import C2FNASError
from c2fnas_auto.nas.budget import BudgetError, CostBudget, Pricing
from c2fnas_auto.planning.budgets import named_budget
from c2fnas_auto.search.runner import Evaluate, Proposal
from c2fnas_auto.search.settings import SearchSettings, Topologies


def resolve_budget(settings: SearchSettings, plans: Any = None) -> tuple[CostBudget, dict[str, Any]]:
    """The budget both stages keep to, and what the search record says about it."""
    info: dict[str, Any] = {}
    max_params, max_gflops = settings.max_params, settings.max_gflops
    if settings.budget is not None:
        if plans is None:
            raise C2FNASError(f"--budget {settings.budget}: a named budget is read from the plans, none given")
        named = named_budget(settings.budget, plans)
        max_params, max_gflops = named.params, named.flops / 1e9
        info["named"] = named.to_dict()
    budget = CostBudget(max_params=max_params, max_gflops=max_gflops, band=settings.budget_band)
    if budget.active:
        info.update(budget.to_dict(), equal_cost=settings.equal_cost)
    return budget, info


def restrict_topologies(topo: Topologies, pricing: Pricing, budget: CostBudget, op: str) -> Topologies:
    """The topologies that, with the coarse op in every cell, are inside the budget at the plans' widths."""
    keep = pricing.admitted(topo.topologies, op, budget)
    if not keep:
        raise C2FNASError(f"no topology with {op} cells fits the budget ({budget.reason(0, 0) or 'too small'}"
                          f"; {_limits(budget)}): raise it, or use --equal-cost to scale widths to it")
    kept = [topo.topologies[i] for i in keep]
    inside = set(map(tuple, kept))
    neighbours = topo.neighbours
    return dataclasses.replace(topo, topologies=kept,
                               neighbours=lambda t: [n for n in neighbours(t) if tuple(n) in inside])


def _limits(budget: CostBudget) -> str:
    return ", ".join(f"{k} {v}" for k, v in budget.to_dict().items() if v is not None)


def width_for(pricing: Pricing, budget: CostBudget) -> Callable[[Sequence[int], Sequence[str]], float | None]:
    """levels, ops -> the width multiplier that fills the budget (None when no width fits: the
    candidate is then priced at the plans' widths and skipped by the guard)."""

    def solve(levels: Sequence[int], ops: Sequence[str]) -> float | None:
        try:
            return pricing.width_for(levels, ops, budget)[0]
        except BudgetError:
            return None

    return solve


def guard(evaluate: Evaluate, pricing: Pricing, budget: CostBudget,
          default_width: Callable[[], float | None] = lambda: None) -> Evaluate:
    """`evaluate` for candidates inside the budget; a skipped answer, priced, for the others.
    A proposal without its own width multiplier is priced at `default_width()` (the coarse
    winner's widths in the stages after the coarse one)."""

    def run(p: Proposal) -> dict[str, Any]:
        m = p.width_multiplier if p.width_multiplier is not None else default_width()
        cost = pricing.cost(p.levels, p.ops, m)
        reason = budget.reason(cost.params, cost.flops)
        if reason:
            return {"status": "skipped", "score": None, "reason": f"outside the budget: {reason}",
                    "params": int(cost.params), "flops": float(cost.flops),
                    "training_bytes": float(cost.training_bytes), "seconds": 0.0}
        return evaluate(p)

    return run
