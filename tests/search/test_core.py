"""The whole search flow (state, resume, report, plots) with fake evaluators."""

from __future__ import annotations

import json

import pytest

from c2fnas_auto.errors import C2FNASError
from c2fnas_auto.search.api import SearchSettings, search_core
from c2fnas_auto.search.state import SearchState

from .fakes import Boom, FakeHooks

SMALL = dict(coarse_candidates=10, coarse_epochs=1, clusters=4, population=4, fine_epochs=1, generations=3,
             iters_per_epoch=2, seed=7, children_per_round=2, tournament=2)


def _search(tmp_path, hooks, **kw):
    return search_core(tmp_path / "search", "Task098_Synthetic", SearchSettings(**SMALL), hooks.hooks(),
                       progress=False, **kw)


def test_full_search_writes_state_report_plot(tmp_path):
    fake = FakeHooks()
    state = _search(tmp_path, fake)
    sdir = tmp_path / "search"
    assert state.finished and state.winner is not None
    on_disk = SearchState.load(sdir / "state.json")
    assert on_disk.winner == state.winner
    assert sum(r.status == "done" for r in on_disk.coarse) == 10 == len(fake.coarse_calls)
    assert len(on_disk.clusters["labels"]) == 1486
    assert fake.supernet_trainings == 1
    # winner = best fine candidate, on the best coarse topology
    best_coarse = max((r for r in on_disk.coarse if r.ok), key=lambda r: r.score)
    assert state.winner["levels"] == best_coarse.levels
    assert state.winner["fine_score"] == max(r.score for r in on_disk.fine if r.ok)
    report = json.loads((sdir / "report.json").read_text())
    assert report["winner"]["ops"] == state.winner["ops"]
    assert report["counts"]["coarse_trained"] == 10
    assert len(report["fine_generations"]) == 3
    assert set(report["compute_seconds"]) == {"clustering", "coarse", "supernet", "fine"}
    assert report["top_coarse"][0]["score"] == best_coarse.score
    proj = report["projection_for_default_budget"]
    d = SearchSettings()
    # fake: 0.5 s per training iteration, 1 s scoring per coarse candidate; supernet 0.5 s / 2 iterations
    assert proj["projected_coarse_hours"] == pytest.approx(
        round(d.coarse_candidates * (d.coarse_epochs * d.iters_per_epoch * 0.5 + 1.0) / 3600, 3))
    assert proj["projected_supernet_hours"] == pytest.approx(
        round(d.fine_epochs * d.iters_per_epoch * 0.25 / 3600, 3))
    assert "projected_total_hours" in proj
    assert on_disk.coarse[0].extra["score_seconds"] == 1.0
    png = (sdir / "search_progress.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_existing_state_needs_continue_or_overwrite(tmp_path):
    _search(tmp_path, FakeHooks())
    with pytest.raises(C2FNASError, match="--continue"):
        _search(tmp_path, FakeHooks())
    fake = FakeHooks()
    _search(tmp_path, fake, overwrite=True)
    assert len(fake.coarse_calls) == 10
    with pytest.raises(C2FNASError, match="changed settings"):
        search_core(tmp_path / "search", "T", SearchSettings(**{**SMALL, "seed": 8}), FakeHooks().hooks(),
                    resume=True, progress=False)


@pytest.mark.parametrize("stage", ["coarse", "fine"])
def test_resume_after_crash_never_reevaluates(tmp_path, stage):
    reference = _search(tmp_path / "ref", FakeHooks())
    crash = FakeHooks(fail_after_coarse=6) if stage == "coarse" else FakeHooks(fail_after_fine=5)
    with pytest.raises(Boom):
        _search(tmp_path, crash)
    saved = SearchState.load(tmp_path / "search" / "state.json")
    done_before = {r.key() for r in saved.records(stage) if r.status == "done"}
    assert len(done_before) == (6 if stage == "coarse" else 5), "state saved after every candidate"
    again = FakeHooks()
    state = _search(tmp_path, again, resume=True)
    evaluated = again.coarse_calls if stage == "coarse" else again.fine_calls
    assert not done_before & set(evaluated), "no finished candidate evaluated again"
    if stage == "coarse":
        assert len(again.coarse_calls) == 10 - 6
    else:
        assert again.coarse_calls == []
        assert len(crash.fine_calls) + len(again.fine_calls) == len(reference.fine)
    # the resumed search made exactly the decisions of an uninterrupted one
    assert [r.key() for r in state.coarse] == [r.key() for r in reference.coarse]
    assert [r.key() for r in state.fine] == [r.key() for r in reference.fine]
    assert state.winner == reference.winner
    # a finished search resumed again evaluates nothing
    idle = FakeHooks()
    _search(tmp_path, idle, resume=True)
    assert idle.coarse_calls == [] and idle.fine_calls == [] and idle.supernet_trainings == 0


def test_all_skipped_is_a_clear_error(tmp_path):
    class AllSkip(FakeHooks):
        def coarse(self, p):
            return {"status": "skipped", "score": None, "reason": "estimated training memory 9 GiB > budget 8 GiB"}

    with pytest.raises(C2FNASError, match="no coarse candidate could be trained"):
        search_core(tmp_path / "s", "T", SearchSettings(**{**SMALL, "coarse_candidates": 2}), AllSkip().hooks(),
                    progress=False)


def test_memory_skips_are_recorded(tmp_path):
    fake = FakeHooks(skip_level4=True)
    state = _search(tmp_path, fake)
    skipped = [r for r in state.coarse if r.status == "skipped"]
    assert all(max(r.levels) == 4 and r.score is None for r in skipped)
    assert max(state.winner["levels"]) < 4


def test_resume_under_changed_plans_refuses_until_finished(tmp_path):
    with pytest.raises(Boom):
        _search(tmp_path, FakeHooks(fail_after_coarse=3), plans_info={"patch_size": [8, 8, 8], "batch_size": 2})
    with pytest.raises(C2FNASError, match="plans changed since this search started"):
        _search(tmp_path, FakeHooks(), resume=True, plans_info={"patch_size": [8, 8, 16], "batch_size": 2})
    state = _search(tmp_path, FakeHooks(), resume=True, plans_info={"patch_size": [8, 8, 8], "batch_size": 2})
    assert state.finished and state.plans["patch_size"] == [8, 8, 8]
    # a finished search was refitted into the plans afterwards: replaying it is fine and needs no supernet
    idle = FakeHooks()
    again = _search(tmp_path, idle, resume=True, plans_info={"patch_size": [8, 8, 16], "batch_size": 4})
    assert again.winner == state.winner and idle.supernet_trainings == 0 and idle.coarse_calls == []
