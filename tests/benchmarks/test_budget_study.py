"""The budget study: its statistics hand-checked, its arms at equal cost, its flow resumable."""

from __future__ import annotations

import dataclasses
import json
import types

import numpy as np
import pytest

from benchmarks.study import budget_stats as bs


def test_holm_hand_computed():
    adj = bs.holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": None})
    assert adj == {"a": pytest.approx(0.03), "c": pytest.approx(0.06), "b": pytest.approx(0.06), "d": None}


def test_d_statistic_direction_and_resampling():
    rng = np.random.default_rng(0)
    randoms = 0.7 + 0.05 * rng.standard_normal((16, 5, 8))
    better = np.full((4, 5, 8), 0.9) + 0.01 * rng.standard_normal((4, 5, 8))
    d = bs.d_statistic(better, randoms, n_boot=200)
    assert d["d"] > 0.15 and d["low"] > 0.1 and d["p"] < 0.01
    same = bs.d_statistic(randoms[:4], randoms[4:], n_boot=200)
    assert same["low"] < 0 < same["high"] and same["p"] > 0.05
    assert bs.d_statistic(better[:, :2], randoms, n_boot=10)["d"] is None


def test_genotype_sd_removes_seed_noise():
    rng = np.random.default_rng(1)
    noise_only = 0.7 + 0.05 * rng.standard_normal((40, 5, 1))
    assert bs.genotype_sd(noise_only) < 0.02
    spread = noise_only + np.linspace(-0.2, 0.2, 40)[:, None, None]
    assert bs.genotype_sd(spread) > 0.1
    assert bs.genotype_sd(noise_only[:1]) is None


@pytest.mark.parametrize("d, ref_p, wsd, gsd, verdict", [
    ({"low": 0.03, "high": 0.09}, 0.01, 0.01, 0.05, "worth it"),
    ({"low": 0.03, "high": 0.09}, 0.20, 0.01, 0.05, "undecided"),
    ({"low": -0.05, "high": 0.01}, 0.01, 0.01, 0.05, "not worth it"),
    ({"low": 0.03, "high": 0.09}, 0.01, 0.06, 0.05, "unreliable"),
    ({"low": 0.03, "high": 0.09}, 0.01, 0.0, 0.0, "unreliable"),
    ({"low": -0.01, "high": 0.05}, 0.01, 0.01, 0.05, "undecided"),
])
def test_the_rule(d, ref_p, wsd, gsd, verdict):
    assert bs.decide(d, ref_p, wsd, gsd).verdict == verdict


def test_kendall_between_uses_common_arms():
    out = bs.kendall_between({"a": 1.0, "b": 2.0, "c": 3.0, "x": 9.0}, {"a": 1.0, "b": 2.0, "c": 3.0, "y": None})
    assert out == {"n": 3, "tau": 1.0}


def test_budget_smoke_end_to_end_and_resume(tmp_path, monkeypatch):
    """The study's flow with the winners given (the search has tests of its own): arms scaled to
    each task's budget, random genotypes in the winners' band, trainings and the longer check,
    summary with D, Holm and a verdict; a rerun trains nothing."""
    from benchmarks.study import budget_study as study
    from benchmarks.study import runner
    from c2fnas_auto.nas.genotype import Genotype, reference_genotype

    for var in ("C2FNAS_raw", "C2FNAS_preprocessed", "C2FNAS_results"):
        monkeypatch.setenv(var, str(tmp_path / "unused"))
    smoke = study.BUDGET_PROFILES["budget_smoke"]
    profile = dataclasses.replace(smoke, transfers=(), num_random=2, long_random=0, epochs=1, iters_per_epoch=1)
    out, work = tmp_path / "out", tmp_path / "work"
    out.mkdir()
    winners = [reference_genotype().with_ops(["2d"] * 12), Genotype([1, 2, 2, 3, 3, 2, 2, 1, 1, 1, 1, 1], ["3d"] * 12)]
    for k, g in enumerate(winners):
        g.save(out / f"searched_run{k}.json")
    store = study.run_budget_study(profile, work, out, progress=False)
    names = {r["arm"] for r in store.records}
    assert names == {"winner_0", "winner_1", "reference_scaled", "random_0", "random_1"}
    arms = store.data["meta"]["arms"]["search"]
    budget = arms["_budget"]["max_params"]
    for name in names:
        assert 0.9 * budget <= arms[name]["params"] <= budget, name  # every arm at the budget's cost
    params = [r["scores"]["params"] for r in store.records if r["task"] == "search"]
    assert max(params) <= budget and min(params) >= 0.9 * budget, "the trained networks are the priced ones"
    mean_w = np.mean([arms[f"winner_{k}"]["gflops"] for k in range(2)])
    assert all(abs(arms[f"random_{i}"]["gflops"] / mean_w - 1) <= profile.band for i in range(2))
    long = [r for r in store.records if r["task"] == "search+long"]
    assert len(long) == profile.long_seeds * 3 and {r["epochs"] for r in long} == {2}
    assert len(store.records) == profile.seeds_source * 5 + len(long)
    summary = json.loads((out / "summary.json").read_text())
    task = summary["tasks"]["search"]
    assert task["complete"] and task["D"]["d"] is not None
    assert {"winners_vs_reference_scaled", "winners_vs_random_median"} <= set(task["comparisons"])
    assert all("p_holm" in c for c in task["comparisons"].values())
    assert summary["decision"]["verdict"] in ("worth it", "not worth it", "unreliable", "undecided")
    assert set(summary["classes"]["search"]) == {"organ", "lesion"}
    assert summary["taus"]["standard_vs_long"]["n"] == 3
    assert "# Budget study (budget_smoke)" in (out / "summary.md").read_text()

    def no_training(*a, **k):
        raise AssertionError("a stored training was redone")

    monkeypatch.setattr(runner, "train_and_score", no_training)
    assert len(study.run_budget_study(profile, work, out, progress=False).records) == len(store.records)


def test_searches_each_start_from_the_study_plans(tmp_path, monkeypatch):
    """Every run gets its own results folder and the study's plans (a search writes its winner
    into plans.json); a finished run is read from its file, never searched again."""
    from benchmarks.study import budget_study as study
    from c2fnas_auto.nas.genotype import reference_genotype
    from c2fnas_auto.search import api

    calls = []
    plans = types.SimpleNamespace(save=lambda path: calls.append(("plans", str(path))))
    task = types.SimpleNamespace(plans=plans, preprocessed=tmp_path / "pre", task_dir=tmp_path / "Dataset194_X")

    def fake_search(name, settings, run, **kw):
        import os

        assert run.resume  # an interrupted study run goes on where it stopped
        calls.append(("search", settings.seed, os.environ["C2FNAS_results"]))
        g = reference_genotype()
        return types.SimpleNamespace(winner={"levels": g.levels, "ops": g.ops, "fine_score": 0.5})

    monkeypatch.setattr(api, "run_search", fake_search)
    monkeypatch.setenv("C2FNAS_results", str(tmp_path / "results"))
    profile = dataclasses.replace(study.BUDGET_PROFILES["budget_smoke"], search_runs=2)
    out = tmp_path / "out"
    out.mkdir()
    winners = study.run_searches(task, profile, out, False)
    assert len(winners) == 2 and (out / "searched_run1.json").is_file()
    searches = [c for c in calls if c[0] == "search"]
    assert [c[1] for c in searches] == [0, 1] and searches[0][2] != searches[1][2]
    # each search's results folder is under the committed results, so an unfinished one outlives the workdir
    assert searches[1][2] == str(out / "search_state" / "results_run1")
    assert calls[0][0] == "plans" and calls[-1][0] == "plans"
    import os

    assert os.environ["C2FNAS_results"] == str(tmp_path / "results")
    calls.clear()
    assert len(study.run_searches(task, profile, out, False)) == 2
    assert not [c for c in calls if c[0] == "search"]


def test_too_narrow_a_band_is_a_clear_error(tmp_path, monkeypatch):
    from benchmarks.study import budget_study as study
    from c2fnas_auto.errors import C2FNASError
    from c2fnas_auto.nas.budget import CostBudget
    from c2fnas_auto.planning.fingerprint import synthetic_fingerprint
    from c2fnas_auto.planning.planner import plan_experiment

    fp = synthetic_fingerprint("Task90_T", {0: "MR"}, {"background": 0, "a": 1}, [[1.0, 1.0, 1.0]] * 4,
                               [[32, 32, 32]] * 4)
    plans = plan_experiment(fp, gpu_memory_gb=0.25, base_channels=8)
    monkeypatch.setattr(study, "MAX_RANDOM_DRAWS", 5)
    with pytest.raises(C2FNASError, match="widen the band"):
        study.matched_randoms(3, 0, plans, CostBudget(max_params=200_000), 200_000, 1e3, 0.01)
    with pytest.raises(C2FNASError, match="only 0 of 5"):  # no width at all fits: every draw is passed over
        study.matched_randoms(1, 0, plans, CostBudget(max_params=10), 10, 1e3, 0.5)
