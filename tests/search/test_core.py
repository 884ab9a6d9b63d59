"""The whole search flow (rungs, state, resume, report, plots) with fake evaluators."""

from __future__ import annotations

import json

import pytest

from c2fnas_auto.errors import C2FNASError
from c2fnas_auto.search.core import search_core
from c2fnas_auto.search.run import SearchRun
from c2fnas_auto.search.settings import SearchSettings
from c2fnas_auto.search.report import expected_coarse_evaluations
from c2fnas_auto.search.state import SearchState
from c2fnas_auto.search.stop import SearchStopped, search_stop_flag
from c2fnas_auto.search.storage import JOURNAL_FILE
from c2fnas_auto.search.jobs import WorkerOptions

from .fakes import Boom, FakeHooks

SMALL = dict(coarse_candidates=9, min_epochs=1, eta=3, rungs=3, clusters=4, population=4, fine_epochs=1,
             generations=3, iters_per_epoch=2, seed=7, tournament=2, standalone_sample=3,
             noise_repeats=0, standalone_repeats=0)  # the noise check's repeats: test_budget_noise.py
FAST = WorkerOptions(stale_seconds=0.5, poll_seconds=0.02)


def _search(tmp_path, hooks, plans_info=None, heldout=None, **run):
    return search_core(tmp_path / "search", "Task098_Synthetic", SearchSettings(**SMALL), hooks.hooks(),
                       run=SearchRun(progress=False, workers=FAST, **run), plans_info=plans_info, heldout=heldout)


def test_full_search_writes_state_report_plots(tmp_path):
    fake = FakeHooks()
    state = _search(tmp_path, fake)
    sdir = tmp_path / "search"
    assert state.finished and state.winner is not None
    on_disk = SearchState.load(sdir / "state.json")
    assert on_disk.winner == state.winner
    rung0 = [r for r in on_disk.coarse if r.rung == 0 and r.status == "done"]
    assert len(rung0) == 9 == len({r.candidate for r in rung0})
    assert len(on_disk.coarse) == len(fake.coarse_calls), "every coarse job evaluated once"
    assert {r.epochs for r in on_disk.coarse} == {1, 3, 9}
    assert len(on_disk.clusters["labels"]) == 1486
    assert fake.supernet_trainings == 1
    # winner topology = best candidate at the highest rung; winner ops = best fine candidate
    top = [r for r in on_disk.coarse if r.rung == 2 and r.ok]
    best_coarse = max(top, key=lambda r: r.score)
    assert state.winner["levels"] == best_coarse.levels and state.winner["coarse_rung"] == 2
    assert state.winner["fine_score"] == max(r.score for r in on_disk.fine if r.ok)
    report = json.loads((sdir / "report.json").read_text())
    assert report["winner"]["ops"] == state.winner["ops"]
    assert report["counts"]["coarse_candidates"] == 9
    assert report["counts"]["coarse_trained_per_rung"]["0"] == 9
    assert report["workers"] == 1
    assert len(report["fine_generations"]) == 3
    assert set(report["compute_seconds"]) == {"clustering", "coarse", "supernet", "fine", "standalone", "repeats"}
    # ranking checks: promoted candidates between rungs, stand-alone vs shared weights
    rank = report["ranking"]
    assert [(x["from_rung"], x["to_rung"]) for x in rank["coarse_rungs"]] == [(0, 1), (1, 2)]
    assert rank["coarse_rungs"][0]["n"] >= 3 and rank["coarse_rungs"][0]["kendall_tau_b"] is not None
    assert rank["fine_standalone"]["n"] == 3 == len(fake.standalone_calls)
    assert rank["fine_standalone"]["epochs"] == 9 and rank["fine_standalone"]["kendall_tau_b"] is not None
    proj = report["projection_for_default_budget"]
    d = SearchSettings().to_dict()
    # fake: 0.5 s per training iteration, 1 s scoring per candidate, at every rung
    expected = sum(n * (e * d["iters_per_epoch"] * 0.5 + 1.0) for n, e in expected_coarse_evaluations(d)) / 3600
    assert proj["projected_coarse_hours"] == pytest.approx(round(expected, 3))
    assert "projected_total_hours" in proj
    for png in ("search_progress.png", "search_ranking.png"):
        data = (sdir / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_default_budget_arithmetic():
    d = SearchSettings().to_dict()
    evals = expected_coarse_evaluations(d)
    assert evals == [(81, 4), (27, 12), (9, 36)]
    assert sum(n * e for n, e in evals) == 972, "candidate-epochs of the coarse stage (was 64 x 20 = 1280)"


def test_existing_state_needs_continue_or_overwrite(tmp_path):
    _search(tmp_path, FakeHooks())
    with pytest.raises(C2FNASError, match="--continue"):
        _search(tmp_path, FakeHooks())
    (tmp_path / "search" / "state.json").unlink()  # trial results without a state are not silently reused
    with pytest.raises(C2FNASError, match="results of an earlier search"):
        _search(tmp_path, FakeHooks())
    fake = FakeHooks()
    _search(tmp_path, fake, overwrite=True)
    assert len([c for c in fake.coarse_calls if c[1] == 0]) == 9, "overwrite starts from an empty trial folder"
    with pytest.raises(C2FNASError, match="changed settings"):
        search_core(tmp_path / "search", "T", SearchSettings(**{**SMALL, "seed": 8}), FakeHooks().hooks(),
                    run=SearchRun(resume=True, progress=False))


def test_a_search_of_the_file_engine_is_not_resumed_silently(tmp_path):
    _search(tmp_path, FakeHooks())
    old = tmp_path / "search" / "trials" / "results"
    old.mkdir(parents=True)
    (old / "c00000-r0.json").write_text("{}")
    (tmp_path / "search" / JOURNAL_FILE).unlink()
    with pytest.raises(C2FNASError, match="trial files of the engine before Optuna"):
        _search(tmp_path, FakeHooks(), resume=True)
    _search(tmp_path, FakeHooks(), overwrite=True)
    assert not (tmp_path / "search" / "trials").exists(), "--overwrite removes the old trial files"


@pytest.mark.parametrize("stage", ["coarse", "fine"])
def test_resume_mid_rung_never_reevaluates(tmp_path, stage):
    crash = FakeHooks(fail_after_coarse=5) if stage == "coarse" else FakeHooks(fail_after_fine=5)
    with pytest.raises(Boom):
        _search(tmp_path, crash)
    saved = SearchState.load(tmp_path / "search" / "state.json")
    assert len(saved.records(stage)) == 5, "state saved after every candidate"
    if stage == "coarse":
        assert {r.rung for r in saved.coarse} == {0, 1}, "the crash came mid-rung, after a promotion"
    again = FakeHooks()
    state = _search(tmp_path, again, resume=True)
    if stage == "coarse":
        assert not set(crash.coarse_calls) & set(again.coarse_calls), "no finished candidate evaluated again"
        assert len(crash.coarse_calls) + len(again.coarse_calls) == len(state.coarse)
    else:
        assert again.coarse_calls == []
        assert not set(crash.fine_calls) & set(again.fine_calls)
        reference = _search(tmp_path / "ref", FakeHooks())
        assert [r.key() for r in state.fine] == [r.key() for r in reference.fine], "the fine stage replays"
    assert state.finished and all(r.status in ("done", "reused", "skipped") for r in state.fine)
    # a finished search resumed again evaluates nothing
    idle = FakeHooks()
    assert _search(tmp_path, idle, resume=True).winner == state.winner
    assert idle.coarse_calls == [] and idle.fine_calls == [] and idle.supernet_trainings == 0


def test_stop_flag_finishes_the_candidate_then_stops(tmp_path):
    stop = search_stop_flag()

    class StopAfterTwo(FakeHooks):
        def coarse(self, p):
            out = super().coarse(p)
            if len(self.coarse_calls) == 2:
                stop.set("SIGTERM")  # arrives while candidate 2 trains
            return out

    fake = StopAfterTwo()
    with pytest.raises(SearchStopped, match="SIGTERM"):
        _search(tmp_path, fake, stop=stop)
    saved = SearchState.load(tmp_path / "search" / "state.json")
    assert len(saved.coarse) == 2 and not saved.finished, "the running candidate finished and was saved"
    again = FakeHooks()
    assert _search(tmp_path, again, resume=True).finished
    assert not set(fake.coarse_calls) & set(again.coarse_calls)


def test_all_skipped_is_a_clear_error(tmp_path):
    class AllSkip(FakeHooks):
        def coarse(self, p):
            return {"status": "skipped", "score": None, "reason": "estimated training memory 9 GiB > budget 8 GiB"}

    with pytest.raises(C2FNASError, match="no coarse candidate could be trained"):
        search_core(tmp_path / "s", "T", SearchSettings(**{**SMALL, "coarse_candidates": 2}), AllSkip().hooks(),
                    run=SearchRun(progress=False, workers=FAST))


def test_memory_skips_are_recorded(tmp_path):
    fake = FakeHooks(skip_level4=True)
    state = _search(tmp_path, fake)
    skipped = [r for r in state.coarse if r.status == "skipped"]
    assert all(max(r.levels) == 4 and r.score is None for r in skipped)
    assert sum(r.status == "done" and r.rung == 0 for r in state.coarse) == 9, "skips do not use the budget"
    assert max(state.winner["levels"]) < 4


def test_resume_under_changed_plans_or_heldout_refuses_until_finished(tmp_path):
    info = {"patch_size": [8, 8, 8], "batch_size": 2}
    with pytest.raises(Boom):
        _search(tmp_path, FakeHooks(fail_after_coarse=3), plans_info=info, heldout={"case_ids": ["a"]})
    with pytest.raises(C2FNASError, match="plans changed since this search started"):
        _search(tmp_path, FakeHooks(), resume=True, plans_info={"patch_size": [8, 8, 16], "batch_size": 2})
    with pytest.raises(C2FNASError, match="held-out set changed"):
        _search(tmp_path, FakeHooks(), resume=True, plans_info=info, heldout={"case_ids": ["b"]})
    state = _search(tmp_path, FakeHooks(), resume=True, plans_info=info, heldout={"case_ids": ["a"]})
    assert state.finished and state.plans["patch_size"] == [8, 8, 8] and state.heldout == {"case_ids": ["a"]}
    # a finished search was refitted into the plans afterwards: replaying it is fine and needs no supernet
    idle = FakeHooks()
    again = _search(tmp_path, idle, resume=True, plans_info={"patch_size": [8, 8, 16], "batch_size": 4})
    assert again.winner == state.winner and idle.supernet_trainings == 0 and idle.coarse_calls == []


def test_bad_schedule_settings_are_user_errors(tmp_path):
    for field, value, text in (("eta", 1, "--eta 1"), ("rungs", 0, "--rungs 0"), ("min_epochs", 0, "--min-epochs 0"),
                               ("heldout_fraction", 1.0, "--heldout-fraction"),
                               ("standalone_sample", -1, "--standalone-sample")):
        with pytest.raises(C2FNASError, match=text):
            SearchSettings(**{**SMALL, field: value}).validate()


def test_overwrite_with_a_storage_that_cannot_be_opened_deletes_nothing(tmp_path):
    _search(tmp_path, FakeHooks())
    supernet = tmp_path / "search" / "supernet.pth"
    supernet.write_bytes(b"weights")  # what a real search leaves
    with pytest.raises(C2FNASError, match="--storage nosuchdb://x: cannot open the search storage"):
        _search(tmp_path, FakeHooks(), overwrite=True, storage="nosuchdb://x")
    assert supernet.read_bytes() == b"weights" and (tmp_path / "search" / JOURNAL_FILE).is_file()
