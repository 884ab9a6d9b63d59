"""The search study: statistics against hand-computed cases, the results store, and a
tiny end-to-end run (searched genotype given, so no search) that checks held-out cases
stay out of training, the results file is well formed, and a rerun trains nothing."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.study import stats  # noqa: E402
from benchmarks.study.report import find_taus, matrices  # noqa: E402
from benchmarks.study.store import ResultStore  # noqa: E402
from benchmarks.study.tasks import REAL_DATA, TaskSpec, make_task  # noqa: E402
from c2fnas_auto.errors import C2FNASError, InputError  # noqa: E402


def test_rank_p_value_and_ranks_hand_computed():
    # searched 0.7 vs randoms 0.5, 0.8, 0.7: two randoms >= 0.7 -> p = (1 + 2) / 4
    assert stats.rank_p_value(0.7, [0.5, 0.8, 0.7]) == pytest.approx(0.75)
    assert stats.rank_p_value(0.9, [0.5, 0.8, 0.7]) == pytest.approx(0.25)
    assert stats.rank_p_value(0.9, []) is None
    assert stats.ranks({"a": 0.9, "b": 0.5, "c": 0.9}) == {"a": 1, "b": 3, "c": 1}


def test_size_adjusted_residuals_hand_computed():
    from benchmarks.study.stats import size_adjusted, spearman

    randoms = [f"random_{i}" for i in range(6)]
    params = {a: 10 ** (5 + 0.2 * i) for i, a in enumerate(randoms)}
    scores = {a: 0.5 + 0.1 * (5 + 0.2 * i) for i, a in enumerate(randoms)}  # exactly on a line in log10(params)
    params.update(searched=10 ** 6, reference=10 ** 5.5)
    scores.update(searched=0.5 + 0.1 * 6 + 0.05, reference=0.5 + 0.1 * 5.5 - 0.02)
    out = size_adjusted(params, scores, randoms, ["searched", "reference", "absent"])
    assert out["spearman_rho"] == pytest.approx(1.0) and out["slope_per_decade"] == pytest.approx(0.1)
    assert out["intercept"] == pytest.approx(0.5)
    assert out["searched"]["residual"] == pytest.approx(0.05) and out["searched"]["rank_among_random"] == 1
    assert out["searched"]["rank_p"] == pytest.approx(1 / 7)
    assert out["reference"]["residual"] == pytest.approx(-0.02) and out["reference"]["rank_p"] == pytest.approx(1.0)
    assert "absent" not in out
    assert size_adjusted(params, scores, randoms[:3], ["searched"])["slope_per_decade"] is None  # too few to fit
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0) and spearman([1, 1, 1], [1, 2, 3]) is None


def test_bootstrap_p_value_direction_and_seeding():
    rng = np.random.default_rng(0)
    randoms = 0.5 + 0.02 * rng.normal(size=(5, 2, 6))
    better = 0.7 + 0.02 * rng.normal(size=(2, 6))
    worse = 0.3 + 0.02 * rng.normal(size=(2, 6))
    hi = stats.bootstrap_p_value(better, randoms, n_boot=200, seed=1)
    lo = stats.bootstrap_p_value(worse, randoms, n_boot=200, seed=1)
    assert hi["p"] == pytest.approx(1 / 201) and hi["diff"] == pytest.approx(0.2, abs=0.03)
    assert lo["p"] == pytest.approx(1.0) and lo["low"] <= lo["diff"] <= lo["high"]
    assert stats.bootstrap_p_value(better, randoms, n_boot=200, seed=1) == hi  # seeded
    assert stats.bootstrap_p_value(better, randoms[:, :1], n_boot=10)["p"] is None  # shapes disagree
    both = stats.pooled_bootstrap_p_value([(better, randoms), (worse, randoms)], n_boot=100, seed=1)
    assert both["tasks"] == 2 and both["diff"] == pytest.approx((hi["diff"] + lo["diff"]) / 2)
    assert stats.pooled_bootstrap_p_value([(better, randoms[:2]), (worse, randoms)])["p"] is None  # N differs
    spread = stats.seed_spread(np.array([[0.4, 0.6], [0.8, np.nan]]))
    assert spread["mean"] == pytest.approx(0.65) and spread["std"] == pytest.approx(np.std([0.5, 0.8], ddof=1))
    assert spread["zero_seeds"] == 0
    # a seed with Dice 0 on every case is counted; one with a single zero case is not
    assert stats.seed_spread(np.array([[0.0, 0.0], [0.0, 0.7], [0.5, 0.6]]))["zero_seeds"] == 1


def test_find_taus_reads_any_layout():
    report = {"ranking": {"coarse": {"rungs": [{"kendall_tau": 0.4}, {"kendall_tau": None}]},
                          "fine": {"tau": -0.2, "n": 5}}, "other": 1}
    assert find_taus(report) == {"ranking.coarse.rungs[0].kendall_tau": 0.4, "ranking.fine.tau": -0.2}


def test_matrices_use_the_seeds_every_arm_has():
    def rec(arm, seed, cm):
        return {"task": "t", "arm": arm, "seed": seed, "scores": {"case_mean": cm}}

    records = [rec("a", 0, {"c1": 0.5, "c2": None}), rec("a", 1, {"c1": 0.7, "c2": 0.1}),
               rec("b", 0, {"c1": 0.2, "c2": 0.3}), rec("b", 1, {"c1": 0.2, "c2": 0.3}),
               rec("b@x", 1, {"c1": 0.9, "c2": 0.9})]
    mats, seeds, cases = matrices(records, "t")
    assert seeds == [0, 1] and cases == ["c1", "c2"]
    assert np.isnan(mats["b@x"][0]).all() and mats["b@x"][1].tolist() == [0.9, 0.9]  # style arms don't cut seeds
    records = records[:1] + records[2:]  # arm a lacks seed 1 now
    mats, seeds, cases = matrices(records, "t")
    assert seeds == [0]
    assert np.isnan(mats["a"][0, 1]) and mats["b"].tolist() == [[0.2, 0.3]]


def test_store_refuses_foreign_files(tmp_path):
    bad = tmp_path / "results.json"
    bad.write_text(json.dumps({"rows": []}))
    with pytest.raises(InputError, match="not a search study results file"):
        ResultStore(bad, "quick")
    good = ResultStore(tmp_path / "r2.json", "quick")
    good.add({"key": "k", "task": "t", "arm": "a", "genotype_id": "g", "cell_style": "default", "seed": 0,
              "scores": {}})
    with pytest.raises(InputError, match="holds profile 'quick'"):
        ResultStore(tmp_path / "r2.json", "full")
    assert ResultStore(tmp_path / "r2.json", "quick").find_same_training("t", "g", "default", 0)["key"] == "k"


def test_task_errors(tmp_path):
    with pytest.raises(InputError, match="unknown kind"):
        make_task(tmp_path, TaskSpec("x", "nope", 1, "X", 1, 1, (8, 8, 8)))
    with pytest.raises(InputError, match="real CT volume missing"):
        make_task(tmp_path, TaskSpec("x", "real_ct", 2, "X", 1, 1, (8, 8, 8)), real_data=tmp_path / "none")


def test_search_report_copy_unreadable_is_ignored(tmp_path):
    from benchmarks.study.runner import SEARCH_REPORT_COPY, read_search_report

    assert read_search_report(tmp_path) is None
    (tmp_path / SEARCH_REPORT_COPY).write_text("{broken")
    assert read_search_report(tmp_path) is None


def test_summary_only_without_results_exits_2(tmp_path):
    from benchmarks import search_study

    assert search_study.main(["--tiny", "--summary-only", "--out", str(tmp_path)]) == 2


def test_tiny_study_end_to_end_and_resume(tmp_path, monkeypatch):
    from benchmarks.study import runner
    from benchmarks.study.profiles import PROFILES
    from c2fnas_auto.nas.genotype import reference_genotype
    from c2fnas_auto.training.splits import fold_case_ids

    for var in ("C2FNAS_raw", "C2FNAS_preprocessed", "C2FNAS_results"):
        monkeypatch.setenv(var, str(tmp_path / "unused"))
    tiny = PROFILES["tiny"]
    # one transfer task keeps it short (the real-CT task's construction has its own test)
    profile = dataclasses.replace(tiny, transfers=tiny.transfers[:1], epochs=1, iters_per_epoch=1)
    out, work = tmp_path / "out", tmp_path / "work"
    out.mkdir()
    # a finished search is read from out/searched_genotype.json: give one, so no search runs here
    searched = reference_genotype().with_ops(["2d"] * 12)
    searched.save(out / runner.SEARCHED_FILE)

    # two shards, as the power profile runs: shard 1 refuses to start before the search exists elsewhere
    # (covered below); here the searched genotype is given, so both run, one after the other
    runner.run_study(profile, work, out, progress=False, shard=(0, 2))
    store = runner.run_study(profile, work, out, progress=False, shard=(1, 2))
    keys = [r["key"] for r in store.records]
    assert sorted(p.name for p in out.glob("results*.json")) == ["results_0of2.json", "results_1of2.json"]
    # searched, reference, searched_3d, random_0 on every task; the other cell style on the source only
    assert len(keys) == len(set(keys)) == len(profile.tasks) * 4 + 2
    assert {r["arm"] for r in store.records} == {"searched", "reference", "searched_3d", "random_0",
                                                 "searched@residual", "reference@residual"}
    assert {r["cell_style"] for r in store.records if "@" not in r["arm"]} == {"c2fnas"}
    meta = store.data["meta"]
    assert meta["arms"]["searched"]["genotype_id"] == searched.short_id()
    for key, info in meta["tasks"].items():
        task_dir = work / "raw" / info["folder"]
        train, val = fold_case_ids(work / "preprocessed" / info["folder"], 0)
        assert not set(info["heldout_cases"]) & (set(train) | set(val)), key  # held out from search and training
        scored = {c for r in store.records if r["task"] == key for c in r["scores"]["per_case"]}
        assert scored == set(info["heldout_cases"])
        assert task_dir.is_dir()
    for r in store.records:
        assert 0.0 <= r["scores"]["mean_fg_dice"] <= 1.0
        assert set(r["scores"]["class_dice"]) == {"1", "2"} or r["task"] != "source"
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["tasks"]) == {t.key for t in profile.tasks}
    assert "searched_vs_random_median" in summary["tasks"]["source"]
    assert "searched_vs_reference" in summary["tasks"]["source"]
    assert "spearman_rho" in summary["tasks"]["source"]["size"]
    assert set(summary["classes"]["source"]) == {"organ", "lesion"}
    md = (out / "summary.md").read_text()
    assert (out / "dice_boxplot.png").stat().st_size > 0 and "| searched |" in md and "| lesion |" in md
    assert (out / "dice_by_class.png").stat().st_size > 0 and (out / "dice_by_size.png").stat().st_size > 0

    # rerun: nothing left to train, in either shard
    def no_training(*a, **k):
        raise AssertionError("a stored training was redone")

    monkeypatch.setattr(runner, "train_and_score", no_training)
    for shard in ((0, 2), (1, 2)):
        assert len(runner.run_study(profile, work, out, progress=False, shard=shard).records) == len(keys)

    # a run killed after some trainings resumes with exactly the missing ones
    path = out / "results_1of2.json"
    data = json.loads(path.read_text())
    dropped = data["records"].pop()
    path.write_text(json.dumps(data))
    redone = []
    monkeypatch.setattr(runner, "train_and_score",
                        lambda task, arm, seed, prof: redone.append((task.spec.key, arm.name, seed))
                        or dropped["scores"])
    runner.run_study(profile, work, out, progress=False, shard=(0, 2))
    assert redone == []  # not shard 0's training
    runner.run_study(profile, work, out, progress=False, shard=(1, 2))
    assert redone == [(dropped["task"], dropped["arm"], dropped["seed"])]

    # a profile with another budget refuses the folder (keys do not carry the budget)
    with pytest.raises(C2FNASError, match="this profile trains at"):
        runner.run_study(dataclasses.replace(profile, iters_per_epoch=2), work, out, progress=False)

    # without a finished search, a shard other than 0 refuses to start (it would search too)
    (out / runner.SEARCHED_FILE).unlink()
    with pytest.raises(C2FNASError, match="shard 0 runs the search"):
        runner.run_study(profile, work, out, progress=False, shard=(1, 2))


def test_shards_split_distinct_trainings_and_keep_same_networks_together():
    from benchmarks.study.arms import build_arms
    from benchmarks.study.profiles import PROFILES
    from benchmarks.study.runner import plan_jobs
    from c2fnas_auto.nas.genotype import reference_genotype

    profile = PROFILES["quick"]
    # the searched genotype equals the reference: the two arms are one training, which must share a shard
    arms = build_arms(reference_genotype(), profile.num_random, profile.random_seed, "c2fnas", nnunet=True)
    everything = plan_jobs(profile, arms)
    parts = [plan_jobs(profile, arms, (k, 3)) for k in range(3)]
    ident = lambda j: (j[0].key, j[1].name, j[2])  # noqa: E731
    assert sorted(ident(j) for p in parts for j in p) == sorted(ident(j) for j in everything)
    assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 3
    for p in parts:
        names = {(j[0].key, j[2]): set() for j in p}
        for j in p:
            names[(j[0].key, j[2])].add(j[1].name)
        for group in names.values():
            assert ("searched" in group) == ("reference" in group)
    assert any(j[1].name == "nnunet" and j[1].genotype is None for j in everything)


def test_nnunet_arm_trains_at_its_own_patch_and_batch(tmp_path, monkeypatch):
    """The nnU-Net arm's plumbing, without nnunetv2 (not a dependency): its network comes from
    its plan, and training and scoring use the plan's patch and batch, not ours."""
    import torch

    from benchmarks.study import nnunet_arm, runner
    from benchmarks.study.arms import Arm
    from benchmarks.study.profiles import PROFILES

    for var in ("C2FNAS_raw", "C2FNAS_preprocessed", "C2FNAS_results"):
        monkeypatch.setenv(var, str(tmp_path / "unused"))
    profile = dataclasses.replace(PROFILES["tiny"], epochs=1, iters_per_epoch=1)
    runner.set_environment(tmp_path)
    task = runner.prepare_task(profile.source, profile, tmp_path)
    plan = nnunet_arm.NnunetPlan((8, 16, 16), 3, {"network_class_name": "fake"}, (3.0, 1.0, 1.0), 0.25)
    task.nnunet = plan
    built, seen = [], {}
    monkeypatch.setattr(nnunet_arm, "build_nnunet_network",
                        lambda p, cin, cout, m=None: built.append(p) or torch.nn.Conv3d(cin, cout, 3, padding=1))
    from c2fnas_auto.training import api

    real_fit, real_score = api.fit, api.score_cases
    monkeypatch.setattr(api, "fit", lambda net, plans, *a, **k: seen.update(fit=(k["patch_size"], k["batch_size"]))
                        or real_fit(net, plans, *a, **k))
    monkeypatch.setattr(api, "score_cases", lambda net, plans, *a, **k: seen.update(score=plans.patch_size)
                        or real_score(net, plans, *a, **k))
    scores = runner.train_and_score(task, Arm("nnunet", None, "nnunet"), 0, profile)
    assert built == [plan]
    assert seen == {"fit": ([8, 16, 16], 3), "score": [8, 16, 16]}
    assert list(task.plans.patch_size) != [8, 16, 16]  # our plans untouched
    assert set(scores["class_dice"]) == {"1", "2"} and 0.0 <= scores["mean_fg_dice"] <= 1.0
    assert nnunet_arm.NnunetPlan.from_dict(plan.to_dict()) == plan and plan.short_id().startswith("nn")


def test_nnunet_plan_needs_nnunet_installed(tmp_path, monkeypatch):
    from benchmarks.study import nnunet_arm

    monkeypatch.setattr("sys.executable", str(tmp_path / "bin" / "python"))
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(C2FNASError, match=r"nnUNetv2_extract_fingerprint not found next to .*bin/python or on PATH "
                                          r".*: the study's nnU-Net arm needs it"):
        nnunet_arm.plan_nnunet(tmp_path / "Dataset191_X", 191, [3.0, 1.0, 1.0], 0.25, tmp_path)


def test_nnunet_scripts_on_path_are_used(tmp_path, monkeypatch):
    from benchmarks.study import nnunet_arm

    monkeypatch.setattr("sys.executable", str(tmp_path / "bin" / "python"))
    monkeypatch.setattr("shutil.which", lambda name: str(tmp_path / "path" / name))
    assert nnunet_arm._tool("nnUNetv2_plan_experiment") == [str(tmp_path / "path" / "nnUNetv2_plan_experiment")]


def test_budget_summary_picks_the_smallest_budget_that_learns_the_lesion(tmp_path):
    from benchmarks.study.arms import Arm
    from benchmarks.study.runner import summarise_budget
    from c2fnas_auto.nas.genotype import reference_genotype

    store = ResultStore(tmp_path / "budget_results.json", "x-budget")
    # means 0.05, 0.35 (one seed never learned it), 0.35, 0.65
    lesion = {(5, 20): [0.0, 0.1], (10, 20): [0.7, 0.0], (10, 40): [0.5, 0.2], (20, 40): [0.6, 0.7]}
    for (e, i), vals in lesion.items():
        for seed, v in enumerate(vals):
            store.add({"key": f"{e}x{i}|{seed}", "epochs": e, "iters_per_epoch": i, "seed": seed,
                       "scores": {"class_dice": {"1": 0.9, "2": v if v else None}, "train_seconds": 1.0}})
    out = summarise_budget(tmp_path, "x-budget", {"background": 0, "organ": 1, "lesion": 2},
                           Arm("reference", reference_genotype(), "c2fnas"))
    assert out["chosen"] == "10x40"
    assert out["budgets"]["10x20"]["lesion_mean"] >= 0.3 and not out["budgets"]["10x20"]["lesion_learned_every_seed"]
    assert out["budgets"]["5x20"]["lesion_dice"]["per_seed"] == [0.0, 0.1]  # a missing lesion counts as 0
    assert json.loads((tmp_path / "budget.json").read_text())["chosen"] == "10x40"


def test_paired_bootstrap_direction():
    rng = np.random.default_rng(0)
    b = rng.uniform(0.4, 0.6, size=(3, 8))
    better = stats.paired_bootstrap(b + 0.05, b, n_boot=200)
    assert better["diff"] == pytest.approx(0.05) and better["p"] < 0.05 and better["low"] > 0
    worse = stats.paired_bootstrap(b - 0.05, b, n_boot=200)
    assert worse["p"] > 0.95
    assert stats.paired_bootstrap(b, b[:2], n_boot=10)["diff"] is None


def test_real_ct_task_is_split_into_disjoint_slabs(tmp_path):
    if not (REAL_DATA / "example_ct_sm.nii.gz").is_file():
        pytest.skip(f"{REAL_DATA} not present")
    from c2fnas_auto.data.dataset import load_dataset

    spec = TaskSpec("real_ct", "real_ct", 193, "StudyRealCT", 2, 2, (8, 32, 32), seed=3)
    folder = make_task(tmp_path, spec)
    ds = load_dataset(folder)
    assert len(ds.training) == 2 and len(ds.test) == 2 and ds.labels["kidney"] == 3
    assert make_task(tmp_path, spec) == folder  # same spec: found, not rebuilt
    with pytest.raises(InputError, match="exists with other contents"):
        make_task(tmp_path, dataclasses.replace(spec, num_train=3))
