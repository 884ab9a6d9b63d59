"""The cost budget: which genotypes it admits (the cost model's prices) and widths solved to fill it."""

import pytest

from c2fnas_auto.nas.budget import (BudgetError, CostBudget, genotype_price, scale_widths,
                                    solve_width_multiplier)
from c2fnas_auto.nas.config import NetworkConfig
from c2fnas_auto.nas.cost import estimate_cost
from c2fnas_auto.nas.genotype import Genotype, reference_genotype

PATCH = (32, 64, 64)
SHALLOW = Genotype([1] * 12, ["3d"] * 12)
DEEP = Genotype([2, 3, 4, 4, 4, 4, 3, 3, 2, 2, 1, 1], ["3d"] * 12)


def config():
    return NetworkConfig(1, 2, stem_channels=16, level_channels=(32, 64, 128, 256))


def test_a_budget_between_two_genotypes_excludes_the_dearer():
    small, big = (estimate_cost(g, config(), PATCH) for g in (SHALLOW, DEEP))
    assert small.params < big.params, "the deep genotype's wide levels cost more parameters"
    budget = CostBudget(max_params=(small.params + big.params) // 2)
    assert budget.admits(small) and not budget.admits(big)
    assert "--max-params" in budget.reason(big.params, big.flops)
    gflops = CostBudget(max_gflops=(small.flops + big.flops) / 2 / 1e9)
    cheap, dear = sorted((small, big), key=lambda c: c.flops)
    assert gflops.admits(cheap) and not gflops.admits(dear)


def test_a_band_excludes_what_is_too_cheap():
    cost = estimate_cost(reference_genotype(), config(), PATCH)
    assert CostBudget(max_params=cost.params, band=0.15).admits(cost)
    too_big_budget = CostBudget(max_params=int(cost.params / 0.8), band=0.15)
    assert not too_big_budget.admits(cost) and "85%" in too_big_budget.reason(cost.params, cost.flops)
    assert CostBudget(max_params=int(cost.params / 0.8)).admits(cost), "without a band the limit is a ceiling"


@pytest.mark.parametrize("kw", [dict(max_params=0), dict(max_gflops=-1.0), dict(max_params=5, band=1.5)])
def test_bad_budget_values_are_one_line_errors(kw):
    with pytest.raises(BudgetError, match="--"):
        CostBudget(**kw)


@pytest.mark.parametrize("genotype", [SHALLOW, DEEP, reference_genotype()])
@pytest.mark.parametrize("measure", ["params", "gflops"])
def test_equal_cost_scaling_lands_within_tolerance(genotype, measure):
    ref = estimate_cost(reference_genotype(), config(), PATCH)
    budget = CostBudget(max_params=ref.params) if measure == "params" else CostBudget(max_gflops=ref.flops / 1e9)
    m, cost = solve_width_multiplier(genotype_price(genotype, PATCH), config(), budget)
    share = budget.usage(cost.params, cost.flops)[measure]
    assert 0.95 <= share <= 1.0, f"{genotype.topology_string()}: {share:.3f} of the budget at x{m:.3f}"
    built = estimate_cost(genotype, scale_widths(config(), m), PATCH)
    assert (built.params, built.flops) == (cost.params, cost.flops)


def test_scaling_that_cannot_fit_says_so():
    tiny = CostBudget(max_params=10)
    with pytest.raises(BudgetError, match="raise the budget"):
        solve_width_multiplier(genotype_price(DEEP, PATCH), config(), tiny)
    with pytest.raises(BudgetError, match="--max-params or --max-gflops"):
        solve_width_multiplier(genotype_price(DEEP, PATCH), config(), CostBudget())


def test_scale_widths_scales_every_width():
    c = scale_widths(config(), 0.5)
    assert c.stem_channels == 8 and c.level_channels == (16, 32, 64, 128)
    with pytest.raises(BudgetError):
        scale_widths(config(), 0.0)


def test_pricing_admits_only_topologies_inside_the_budget():
    from c2fnas_auto.nas.budget import Pricing
    from c2fnas_auto.nas.topology import enumerate_topologies

    pricing = Pricing(config(), PATCH)
    topologies = [tuple(t) for t in enumerate_topologies()[:60]] + [tuple(SHALLOW.levels), tuple(DEEP.levels)]
    costs = [pricing.cost(t, ["3d"] * 12).params for t in topologies]
    limit = sorted(costs)[len(costs) // 2]
    kept = pricing.admitted(topologies, "3d", CostBudget(max_params=limit))
    assert kept and len(kept) < len(topologies)
    assert all(costs[i] <= limit for i in kept) and all(costs[i] > limit for i in set(range(len(costs))) - set(kept))
    m, cost = pricing.width_for(DEEP.levels, DEEP.ops, CostBudget(max_params=limit))
    assert m < 1 and 0.95 * limit <= cost.params <= limit
    assert pricing.cost(DEEP.levels, DEEP.ops, m).params == cost.params


def test_the_band_applies_to_the_limit_that_binds():
    cost = estimate_cost(reference_genotype(), config(), PATCH)
    both = CostBudget(max_params=cost.params, max_gflops=10 * cost.flops / 1e9, band=0.15)
    assert both.admits(cost), "parameters fill their limit; the FLOPs limit is far and does not bind"
    assert not CostBudget(max_params=2 * cost.params, max_gflops=10 * cost.flops / 1e9, band=0.15).admits(cost)


def test_largest_multiplier_bounds():
    from c2fnas_auto.nas.budget import MAX_WIDTH_MULTIPLIER, largest_multiplier

    assert largest_multiplier(lambda m: m / 1000) == MAX_WIDTH_MULTIPLIER
    assert largest_multiplier(lambda m: 1000 * m) is None
    assert largest_multiplier(lambda m: m * m / 4) == pytest.approx(2.0, rel=1e-3)
