"""The real evaluators under a budget: priced first, trained at the proposal's widths and seed."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from c2fnas_auto.errors import C2FNASError
from c2fnas_auto.nas.budget import CostBudget
from c2fnas_auto.nas.genotype import reference_genotype
from c2fnas_auto.planning.plans import Plans
from c2fnas_auto.search.coarse import TrainingContext, make_coarse_evaluator
from c2fnas_auto.search.runner import Proposal

REF = reference_genotype()


def _ctx(task, **kw) -> TrainingContext:
    from c2fnas_auto.training.splits import fold_case_ids

    train_ids, val_ids = fold_case_ids(task.preprocessed_dir, 0)
    plans = Plans.load(task.preprocessed_dir / "plans.json")
    return TrainingContext(plans=plans, preprocessed_dir=task.preprocessed_dir, train_ids=list(train_ids)[:2],
                           val_ids=list(val_ids)[:1], device=torch.device("cpu"), seed=0, iters_per_epoch=1, **kw)


def test_screen_names_the_budget(tiny_task):
    ctx = _ctx(tiny_task)
    p = Proposal(levels=tuple(REF.levels), ops=tuple(REF.ops))
    _, fields, _ = ctx.screen(p)
    ctx.budget = CostBudget(max_params=fields["params"] - 1)
    assert "--max-params" in ctx.screen(p)[2]
    ctx.budget = CostBudget(max_params=fields["params"])
    assert ctx.screen(p)[2] == ""
    half = dataclasses.replace(p, width_multiplier=0.5)
    assert ctx.screen(half)[1]["params"] < fields["params"] / 3, "the price follows the proposal's widths"


def test_coarse_candidate_trains_at_its_widths_and_seed(copy_task, monkeypatch):
    import c2fnas_auto.training.api as api

    ctx = _ctx(copy_task)
    seeds, sizes = [], []
    real_fit = api.fit

    def fit(net, *a, **k):
        seeds.append(k["seed"])
        sizes.append(sum(p.numel() for p in net.parameters()))
        return real_fit(net, *a, **k)

    monkeypatch.setattr(api, "fit", fit)
    evaluate = make_coarse_evaluator(ctx, epochs=1)
    p = Proposal(levels=tuple(REF.levels), ops=tuple(REF.ops), epochs=1, width_multiplier=2.0, seed=11)
    ans = evaluate(p)
    assert ans.get("status") != "skipped" and ans["score"] is not None and ans["width_multiplier"] == 2.0
    assert seeds[0] == 11 and sizes[0] == ans["params"] == ctx.pricing().cost(REF.levels, REF.ops, 2.0).params


def test_supernet_checkpoint_at_other_widths_is_refused(copy_task):
    from c2fnas_auto.search.fine import train_supernet

    ctx = _ctx(copy_task)
    ckpt = copy_task.root / "supernet.pth"
    train_supernet((1,) * 12, ctx, 0, ckpt, progress=False)
    ctx.width_multiplier = 0.5
    with pytest.raises(C2FNASError, match="width multiplier None, expected 0.5"):
        train_supernet((1,) * 12, ctx, 0, ckpt, progress=False)


def test_no_width_fits_a_tiny_budget():
    from c2fnas_auto.nas.budget import Pricing
    from c2fnas_auto.nas.config import NetworkConfig
    from c2fnas_auto.search.budgeting import width_for

    pricing = Pricing(NetworkConfig(1, 2, stem_channels=8, level_channels=(16, 32, 64, 128)), (16, 32, 32))
    solve = width_for(pricing, CostBudget(max_params=10))
    assert solve(REF.levels, REF.ops) is None
    assert width_for(pricing, CostBudget(max_params=10 ** 6))(REF.levels, REF.ops) is not None


def test_cli_search_under_a_named_budget_at_equal_cost(copy_task, capsys):
    """A real (tiny) search: the budget and the noise check reach the report, the winner's widths
    reach the plans and the genotype, and every trained candidate is inside the budget."""
    import json

    from c2fnas_auto.cli.search import main
    from c2fnas_auto.nas.genotype import Genotype
    from c2fnas_auto.paths import search_results_dir

    args = ["-t", "98", "--coarse-candidates", "2", "--clusters", "2", "--population", "2", "--min-epochs", "1",
            "--eta", "2", "--rungs", "2", "--fine-epochs", "1", "--generations", "1", "--iters-per-epoch", "1",
            "--standalone-sample", "2", "--device", "cpu", "--no-progress", "--seed", "3",
            "--budget", "reference", "--equal-cost", "--budget-band", "0.5", "--noise-repeats", "2",
            "--standalone-repeats", "2"]
    assert main(args) == 0
    folder = search_results_dir(copy_task.task_name)
    report = json.loads((folder / "report.json").read_text())
    budget = report["budget"]
    assert budget["named"]["name"] == "reference" and budget["equal_cost"] is True
    trained = [r for r in report["top_coarse"] + report["top_fine"]]
    assert all(r["params"] <= budget["max_params"] for r in trained)
    assert report["counts"]["coarse_repeats_trained"] == 2 and report["counts"]["standalone_repeats_trained"] == 2
    assert {s["stage"] for s in report["noise"]["stages"]} == {"coarse rung 0", "fine (stand-alone)"}
    genotype = Genotype.load(folder / "genotype.json")
    m = genotype.provenance["width_multiplier"]
    assert m is not None and genotype.provenance["budget"]["max_params"] == budget["max_params"]
    plans = Plans.load(copy_task.preprocessed_dir / "plans.json")
    searched = report["searched_at"]["network"]
    assert plans.network.stem_channels == max(1, round(searched["stem_channels"] * m))
    err = capsys.readouterr().err
    warned = [line for line in err.splitlines() if "within its noise" in line]
    assert len(warned) == len(report["noise"]["within_noise"])
    assert all(line.startswith("c2fnas_search: warning: ") for line in warned)
