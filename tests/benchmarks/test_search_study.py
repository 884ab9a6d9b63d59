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
from c2fnas_auto.errors import InputError  # noqa: E402


def test_rank_p_value_and_ranks_hand_computed():
    # searched 0.7 vs randoms 0.5, 0.8, 0.7: two randoms >= 0.7 -> p = (1 + 2) / 4
    assert stats.rank_p_value(0.7, [0.5, 0.8, 0.7]) == pytest.approx(0.75)
    assert stats.rank_p_value(0.9, [0.5, 0.8, 0.7]) == pytest.approx(0.25)
    assert stats.rank_p_value(0.9, []) is None
    assert stats.ranks({"a": 0.9, "b": 0.5, "c": 0.9}) == {"a": 1, "b": 3, "c": 1}


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

    store = runner.run_study(profile, work, out, progress=False)
    keys = [r["key"] for r in store.records]
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
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["tasks"]) == {t.key for t in profile.tasks}
    assert "searched_vs_random_median" in summary["tasks"]["source"]
    assert (out / "dice_boxplot.png").stat().st_size > 0 and "| searched |" in (out / "summary.md").read_text()

    # rerun: nothing left to train
    def no_training(*a, **k):
        raise AssertionError("a stored training was redone")

    monkeypatch.setattr(runner, "train_and_score", no_training)
    assert len(runner.run_study(profile, work, out, progress=False).records) == len(keys)

    # a run killed after some trainings resumes with exactly the missing ones
    data = json.loads((out / runner.RESULTS_FILE).read_text())
    dropped = data["records"].pop()
    (out / runner.RESULTS_FILE).write_text(json.dumps(data))
    redone = []
    monkeypatch.setattr(runner, "train_and_score",
                        lambda task, arm, seed, prof: redone.append((task.spec.key, arm.name, seed)) or dropped["scores"])
    runner.run_study(profile, work, out, progress=False)
    assert redone == [(dropped["task"], dropped["arm"], dropped["seed"])]


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
