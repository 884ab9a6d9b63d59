"""The search ranks genotypes, not unlucky inits: a candidate (or the supernet) whose
training did not start is retrained once from a fresh seed, and the report counts it."""

from __future__ import annotations

import dataclasses

import torch

from c2fnas_auto.planning.plans import Plans
from c2fnas_auto.training.splits import fold_case_ids


def _ctx(copy_task):
    from c2fnas_auto.search.coarse import TrainingContext

    plans = Plans.load(copy_task.preprocessed_dir / "plans.json")
    plans.patch_size = [8, 16, 16]
    train_ids, val_ids = fold_case_ids(copy_task.preprocessed_dir, 0)
    return TrainingContext(plans=plans, preprocessed_dir=copy_task.preprocessed_dir, train_ids=list(train_ids),
                           val_ids=list(val_ids[:1]), device="cpu", seed=0, iters_per_epoch=2)


def _freeze_classifier(net) -> None:
    """A training that cannot start, whatever the head: zero, frozen classifier weights give
    constant logits (background wins the argmax) and no gradient to anything below."""
    net.head_classifier.conv.weight.data.zero_()
    net.head_classifier.conv.weight.requires_grad_(False)


def _dead_first(monkeypatch, module, name):
    """Patch `module.name` (a network builder) so its first network has a dead head; record seeds."""
    real = getattr(module, name)
    seeds = []

    def build(*a, **k):
        net = real(*a, **k)
        seeds.append(torch.initial_seed())
        if len(seeds) == 1:
            _freeze_classifier(net)
        return net

    monkeypatch.setattr(module, name, build)
    return seeds


def test_non_starting_candidate_is_retrained_once_with_a_fresh_seed(copy_task, monkeypatch):
    import c2fnas_auto.nas.network as network
    from c2fnas_auto.search.coarse import RESTART_SEED_OFFSET, make_coarse_evaluator
    from c2fnas_auto.search.runner import Proposal

    torch.set_num_threads(1)
    seeds = _dead_first(monkeypatch, network, "build_network")
    ans = make_coarse_evaluator(_ctx(copy_task), epochs=2)(Proposal(levels=(1,) * 12, ops=("3d",) * 12))
    assert ans["restarted"] == 1 and seeds == [0, RESTART_SEED_OFFSET]
    assert ans["train_iterations"] == 2 * 2 * 2  # both trainings counted
    # a candidate that starts (or, here, is not judged dead) is trained once
    seeds.clear()
    seeds.append(-1)  # the patched builder now leaves every network alone
    ans = make_coarse_evaluator(_ctx(copy_task), epochs=2)(Proposal(levels=(1,) * 12, ops=("2d",) * 12))
    assert seeds == [-1, 0]


def test_a_second_non_start_is_kept_not_retried_forever(copy_task, monkeypatch):
    import c2fnas_auto.nas.network as network
    from c2fnas_auto.search.coarse import make_coarse_evaluator
    from c2fnas_auto.search.runner import Proposal

    real = network.build_network
    calls = []

    def always_dead(*a, **k):
        net = real(*a, **k)
        calls.append(1)
        _freeze_classifier(net)
        return net

    monkeypatch.setattr(network, "build_network", always_dead)
    ans = make_coarse_evaluator(_ctx(copy_task), epochs=1)(Proposal(levels=(1,) * 12, ops=("3d",) * 12))
    assert len(calls) == 2 and ans["restarted"] == 1 and ans["score"] == 0.0


def test_supernet_restart_is_recorded_and_report_counts_restarts(copy_task, monkeypatch):
    import c2fnas_auto.nas.supernet as supernet_mod
    from c2fnas_auto.search.coarse import RESTART_SEED_OFFSET
    from c2fnas_auto.search.fine import train_supernet
    from c2fnas_auto.search.report import build_report
    from c2fnas_auto.search.state import CandidateRecord, SearchState

    torch.set_num_threads(1)
    seeds = _dead_first(monkeypatch, supernet_mod, "build_supernet")
    ctx = dataclasses.replace(_ctx(copy_task))
    _, info = train_supernet((1,) * 12, ctx, 2, copy_task.root / "supernet.pth", progress=False)
    assert info["restarted"] == 1 and seeds == [0, RESTART_SEED_OFFSET]
    _, again = train_supernet((1,) * 12, ctx, 2, copy_task.root / "supernet.pth", progress=False)
    assert again["loaded"] and again["restarted"] == 1  # the count survives a resume

    def rec(i, stage, restarted):
        return CandidateRecord(index=i, stage=stage, levels=[1] * 12, ops=["3d"] * 12, status="done", score=0.5,
                               extra={"restarted": restarted})

    state = SearchState(task_name="t", settings={"iters_per_epoch": 2, "coarse_candidates": 2, "eta": 2,
                                                 "min_epochs": 1, "rungs": 1, "standalone_sample": 0,
                                                 "fine_epochs": 1},
                        coarse=[rec(0, "coarse", 1), rec(1, "coarse", 0), rec(2, "coarse", 1)],
                        standalone=[rec(3, "standalone", 1)])
    state.supernet = {"restarted": 1, "seconds": 1.0, "epochs": 1}
    report = build_report(state, dict(state.settings))
    assert report["restarts"] == {"coarse": 2, "standalone": 1, "supernet": 1}
