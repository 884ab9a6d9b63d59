"""Kendall tau-b, the successive-halving rules and the jobs as Optuna trials (no training)."""

from __future__ import annotations

import math
import time

import pytest

from c2fnas_auto.search.asha import (CoarseView, Rungs, best_candidate, job_id, next_action, promotable,
                                     read_view, run_coarse)
from c2fnas_auto.search.kendall import kendall_tau_b
from c2fnas_auto.errors import C2FNASError
from c2fnas_auto.search.jobs import Job, WorkerOptions
from c2fnas_auto.search.optuna_trials import OptunaTrials, job_trials, stage_of
from c2fnas_auto.search import storage as storage_mod
from c2fnas_auto.search.storage import JOURNAL_FILE, LEGACY_DB_FILE, default_url, shown

FAST = WorkerOptions(stale_seconds=1, poll_seconds=0.02)


def test_kendall_tau_b_against_a_hand_computed_case():
    # x distinct; y = 3,1,2,5,5. Pairs: concordant 7, discordant 2 ((1,2), (1,3)), one tie in y (4,5).
    # tau-b = (7 - 2) / sqrt((10 - 0) * (10 - 1)) = 5 / sqrt(90)
    assert kendall_tau_b([1, 2, 3, 4, 5], [3, 1, 2, 5, 5]) == pytest.approx(5 / math.sqrt(90))
    assert kendall_tau_b([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert kendall_tau_b([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # ties on both sides: x = 1,1,2  y = 1,2,2 -> C=1 (pair 1,3), ties_x=1, ties_y=1 -> 1/sqrt(2*2)
    assert kendall_tau_b([1, 1, 2], [1, 2, 2]) == pytest.approx(0.5)
    assert kendall_tau_b([1], [2]) is None and kendall_tau_b([1, 1], [1, 2]) is None
    with pytest.raises(ValueError):
        kendall_tau_b([1, 2], [1])


def _view(rung_scores: dict[int, dict[int, float]], claimed=(), running=()) -> CoarseView:
    v = CoarseView()
    for rung, scores in rung_scores.items():
        for c, s in scores.items():
            v.candidates[c] = {"levels": [1] * 12, "ops": ["3d"] * 12, "cluster": 0}
            v.answers[(c, rung)] = {"score": s}
            v.claimed[(c, rung)] = {"worker": "w"}
    for key in claimed:
        v.candidates.setdefault(key[0], {"levels": [1] * 12, "ops": ["3d"] * 12, "cluster": 0})
        v.claimed[key] = {"worker": "w"}
    v.running = set(running)
    return v


def test_promotion_takes_the_top_third_highest_rung_first():
    rungs = Rungs(min_epochs=2, eta=3, count=3)
    assert [rungs.epochs(r) for r in range(3)] == [2, 6, 18]
    v = _view({0: {0: 0.1, 1: 0.9, 2: 0.5, 3: 0.7, 4: 0.2, 5: 0.3}})
    assert promotable(v, rungs) == [(1, 1), (3, 1)], "best 6 // 3 = 2 of rung 0"
    v = _view({0: {0: 0.1, 1: 0.9, 2: 0.5, 3: 0.7, 4: 0.2, 5: 0.3}}, claimed=[(1, 1)])
    assert promotable(v, rungs) == [(3, 1)], "a promoted candidate is not promoted again"
    v = _view({0: {0: 0.1, 1: 0.9, 2: 0.5, 3: 0.7, 4: 0.2, 5: 0.3}, 1: {1: 0.8, 3: 0.85, 2: 0.1}})
    assert promotable(v, rungs)[0] == (3, 2), "the highest rung goes first"
    v = _view({0: {0: 0.1, 1: 0.9}})
    assert promotable(v, rungs) == [], "fewer than eta results: nothing to promote yet"
    # a skipped candidate (no score) does not count in its rung
    v = _view({0: {0: 0.1, 1: 0.9}})
    v.answers[(2, 0)] = {"status": "skipped", "score": None}
    assert promotable(v, rungs) == []


def test_next_action_order_orphan_promote_new_wait_done():
    rungs = Rungs(1, 3, 2)
    full = {0: {0: 0.1, 1: 0.9, 2: 0.5}}
    assert next_action(_view(full, claimed=[(3, 0)]), rungs, 9, 100, True).key == (3, 0), "orphans first"
    assert next_action(_view(full), rungs, 9, 100, True).key == (1, 1)
    v = _view(full, claimed=[(1, 1)], running=[(1, 1)])
    assert next_action(v, rungs, 9, 100, True).kind == "new"
    assert next_action(v, rungs, 3, 100, True).kind == "wait", "budget: 3 trained at rung 0, one job running"
    view = _view(full, claimed=[(4, 0), (1, 1)], running=[(4, 0), (1, 1)])
    assert next_action(view, rungs, 4, 100, True).kind == "wait", "a running rung-0 candidate counts against the budget"
    assert next_action(v, rungs, 9, 100, False).kind == "wait", "space exhausted"
    done = _view({0: full[0], 1: {1: 0.7}})
    assert next_action(done, rungs, 3, 100, True).kind == "done"
    assert best_candidate(done) == (1, 1, 0.7), "the winner comes from the highest rung reached"


def _payload(n: int, view) -> dict:
    return {"levels": [1 + (n % 3)] * 12, "ops": ["3d"] * 12, "cluster": n % 2} if n < 50 else None


def _score(job: Job) -> dict:
    c, e = job.payload["candidate"], job.payload["epochs"]
    return {"score": (c * 37 % 11) / 11 + 0.01 * e}


def test_one_worker_runs_every_rung_and_the_final_top_third_is_promoted(tmp_path):
    store = OptunaTrials(default_url(tmp_path), "T", options=FAST).start()
    calls = []
    view = run_coarse(store, Rungs(1, 3, 3), 9, _payload, lambda j: calls.append(j.id) or _score(j))
    store.stop()
    assert len(calls) == len(set(calls)) == len(view.answers)
    per_rung = [sum(r == k for _, r in view.answers) for k in range(3)]
    assert per_rung[0] == 9 and per_rung[1] >= 3 and per_rung[2] >= 1
    rung0 = view.rung_scores(0)
    top3 = sorted(rung0, key=lambda c: -rung0[c])[:3]
    assert all((c, 1) in view.answers for c in top3), "ASHA ends with the top 1/eta of each rung promoted"
    assert all((c, 0) in view.answers for c, r in view.answers if r == 1)
    assert best_candidate(view)[1] == 2
    assert all(abs(r["finished_at"] - time.time()) < 600 for r in view.results.values()), "completion time as epoch"


def test_a_result_stored_by_an_earlier_version_keeps_its_finished_at(tmp_path):
    from optuna.trial import TrialState, create_trial

    store = _store(tmp_path, "old")
    job = _job(4)
    store.storage.create_new_trial(store._sid("coarse"), template_trial=create_trial(
        state=TrialState.COMPLETE, value=0.5, user_attrs={"job": job.id, "payload": job.payload,
                                                          "answer": {"score": 0.5}, "finished_at": 123.0}))
    assert store.result(job.id)["finished_at"] == 123.0
    store.stop()


def _store(tmp_path, worker, options=FAST):
    return OptunaTrials(default_url(tmp_path), "T", worker, options).start()


def _job(c=0):
    return Job(job_id(c, 0), {"levels": [1] * 12, "ops": ["3d"] * 12, "cluster": 0, "candidate": c, "rung": 0,
                              "epochs": 1})


def _states(tmp_path, job=None):
    return sorted(t["state"] for t in job_trials(default_url(tmp_path), "T") if job is None or t["job"] == job.id)


def _wait_until(cond, seconds=30):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not cond():
        time.sleep(0.05)
    return cond()


def test_claims_are_exclusive_and_a_dead_workers_job_is_taken_again_once(tmp_path):
    a, b = _store(tmp_path, "hostA-1-aa"), _store(tmp_path, "hostA-1-bb")
    job = _job()
    assert a.try_claim(job) == job and b.try_claim(job) is None, "one claim per job"
    a._stop.set()  # worker a hangs or dies: its beats stop, nothing else happens
    a._thread.join()
    assert _wait_until(lambda: read_view(b).orphaned() == [(0, 0)]), "failed once a's beat stood still for the grace"
    assert not b.alive("hostA-1-aa") and b.alive("hostA-1-bb")
    assert b.try_claim(job) == job, "the failed job is taken again"
    assert b.finish(job, {"score": 0.5})
    assert not a.finish(job, {"score": 0.1}), "a late result of the dead worker is not recorded"
    assert b.result(job.id)["answer"]["score"] == 0.5
    assert b.result(job.id)["worker"] == "hostA-1-bb", "the result names the worker that ran it"
    assert b.try_claim(job) is None, "finished jobs are never claimed"
    for _ in range(3):
        read_view(b)  # looking for dead workers again fails and retakes nothing more
    assert _states(tmp_path, job) == ["COMPLETE", "FAIL"], "run again exactly once"
    b.stop()


def test_two_workers_claiming_one_job_at_once_run_it_once(tmp_path, monkeypatch):
    a, b = _store(tmp_path, "a"), _store(tmp_path, "b")
    job = _job()
    create = a.storage.create_new_trial

    def b_claims_in_between(*args, **kwargs):  # both looked and saw no attempt; b writes first
        monkeypatch.setattr(a.storage, "create_new_trial", create)
        assert b.try_claim(job) == job
        return create(*args, **kwargs)

    monkeypatch.setattr(a.storage, "create_new_trial", b_claims_in_between)
    assert a.try_claim(job) is None, "a sees b's attempt under a lower trial number and gives its own up"
    trials = sorted(job_trials(default_url(tmp_path), "T"), key=lambda t: t["number"])
    assert [(t["state"], t["worker"]) for t in trials] == [("RUNNING", "b"), ("FAIL", "a")]
    assert trials[1]["duplicate_of"] == trials[0]["number"]
    v = read_view(a)
    assert v.running == {(0, 0)} and v.orphaned() == [], "the given-up attempt does not make the job look orphaned"
    assert b.finish(job, {"score": 1.0})
    a.stop()
    b.stop()


def test_a_job_finished_by_another_worker_while_being_claimed_is_left_alone(tmp_path, monkeypatch):
    a, b = _store(tmp_path, "a"), _store(tmp_path, "b")
    job = _job()
    create = b.storage.create_new_trial

    def a_runs_it_first(*args, **kwargs):
        monkeypatch.setattr(b.storage, "create_new_trial", create)
        assert a.try_claim(job) == job and a.finish(job, {"score": 0.3})
        return create(*args, **kwargs)

    monkeypatch.setattr(b.storage, "create_new_trial", a_runs_it_first)
    assert b.try_claim(job) is None
    assert b.result(job.id)["worker"] == "a" and _states(tmp_path, job) == ["COMPLETE", "FAIL"]
    a.stop()
    b.stop()


def test_liveness_survives_a_failed_beat_and_a_crash_mid_job_frees_the_job(tmp_path, monkeypatch):
    me, other = _store(tmp_path, "me"), _store(tmp_path, "other")
    assert me.alive("me") and other.alive("me") and not other.alive("nobody")
    calls = []
    write = me.storage.set_trial_user_attr

    def flaky(trial_id, key, value):
        calls.append(key)
        if key == "beat" and len(calls) == 1:
            raise OSError("storage briefly unreachable")
        write(trial_id, key, value)

    monkeypatch.setattr(me.storage, "set_trial_user_attr", flaky)
    assert _wait_until(lambda: len(calls) >= 4)
    assert me.heartbeat_errors == 1 and me._thread.is_alive(), "one failed write does not stop the beat"
    for _ in range(6):  # past the grace period, looking now and then
        time.sleep(0.3)
        assert other.alive("me"), "still alive: its beat moves"
    job = _job(1)
    assert me.try_claim(job) == job
    me.stop()  # the evaluator raised: the held job is failed at once
    assert not other.alive("me"), "a stopped worker's trial is complete"
    assert _states(tmp_path, job) == ["FAIL"] and read_view(other).orphaned() == [(1, 0)]
    other.stop()


def test_a_worker_judged_dead_while_alive_announces_itself_again(tmp_path, monkeypatch):
    from optuna.trial import TrialState

    a, b = _store(tmp_path, "a"), _store(tmp_path, "b")
    job = _job()
    assert a.try_claim(job) == job
    announce = a._announce

    def unreachable_once():
        monkeypatch.setattr(a, "_announce", announce)
        raise OSError("storage briefly unreachable")

    monkeypatch.setattr(a, "_announce", unreachable_once)
    b.storage.set_trial_state_values(a._worker_trial, TrialState.FAIL)  # b judged a dead (a stalled) ...
    b.storage.set_trial_state_values(a._current, TrialState.FAIL)  # ... and failed its job
    assert not b.alive("a")
    assert _wait_until(lambda: b.alive("a")), "a's next beats find its trial failed and announce a again"
    assert a.heartbeat_errors == 1, "the first announcement failed and was tried again at the next beat"
    assert not a.finish(job, {"score": 0.9}), "its result for the failed attempt is not recorded"
    assert a.try_claim(job) == job and a.finish(job, {"score": 0.9}), "and it works on as a live worker"
    assert len({t.user_attrs["worker"] for t in b._trials("workers")}) == 2
    a.stop()
    b.stop()


def test_sqlite_readers_wait_for_no_writer_and_writers_still_queue(tmp_path):
    import sqlite3
    import threading

    url = f"sqlite:///{tmp_path / LEGACY_DB_FILE}"
    store = OptunaTrials(url, "T", "r", WorkerOptions(stale_seconds=60, poll_seconds=0.02)).start()
    store.try_claim(_job())
    read_view(store)  # dead workers looked for (writes): not again for a heartbeat interval (15 s)
    lock = sqlite3.connect(tmp_path / LEGACY_DB_FILE, isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")  # another worker is writing (holds SQLite's write lock)
    done = {}
    read = threading.Thread(target=lambda: done.update(read=read_view(store).claimed))
    write = threading.Thread(target=lambda: done.update(write=store.mark("x", {"v": 1})))
    read.start()
    read.join(timeout=30)
    assert list(done.get("read", {})) == [(0, 0)], "a read is answered while the write lock is held"
    write.start()
    write.join(timeout=1)
    assert "write" not in done, "a write still waits for the lock (BEGIN IMMEDIATE)"
    lock.execute("COMMIT")
    write.join(timeout=30)
    assert done.get("write") is True and store.marker("x") == {"v": 1}
    lock.close()
    store.stop()


def test_the_default_storage_is_the_journal_and_an_earlier_sqlite_search_is_still_opened(tmp_path):
    assert default_url(tmp_path) == str(tmp_path.resolve() / JOURNAL_FILE)
    old = tmp_path / "old"
    old.mkdir()
    (old / LEGACY_DB_FILE).write_bytes(b"")
    assert default_url(old) == f"sqlite:///{old.resolve() / LEGACY_DB_FILE}", "resume reads what it wrote"
    (old / JOURNAL_FILE).write_bytes(b"")
    assert default_url(old) == str(old.resolve() / JOURNAL_FILE)


def test_bad_storage_and_job_ids_are_one_line_errors(tmp_path, monkeypatch):
    with pytest.raises(C2FNASError, match=r"--storage nosuchdb://x: cannot open the search storage"):
        OptunaTrials("nosuchdb://x", "T")
    with pytest.raises(C2FNASError, match=r"--storage files: the per-candidate files engine was removed"):
        OptunaTrials("files", "T")
    bad = tmp_path / "bad.log"
    bad.write_text("this is not JSON\n{}\n")
    with pytest.raises(C2FNASError, match=rf"--storage {bad}: cannot open the search storage"):
        OptunaTrials(str(bad), "T")
    big = tmp_path / "big.log"
    big.write_bytes(b"{}" * 64)
    monkeypatch.setattr(storage_mod, "MAX_JOURNAL_BYTES", 100)
    with pytest.raises(C2FNASError, match=r"big.log: 128 bytes, more than any search writes"):
        OptunaTrials(str(big), "T")
    for bad_seconds in (0, -1, float("nan"), float("inf")):
        with pytest.raises(C2FNASError, match=rf"--stale-seconds {bad_seconds}: must be a positive number"):
            OptunaTrials(default_url(tmp_path), "T", options=WorkerOptions(stale_seconds=bad_seconds))
    assert shown("not a url") == "not a url"
    assert shown("postgresql://u:secret@h/db") == "postgresql://u:***@h/db"
    with pytest.raises(ValueError, match="job id 'x1'"):
        stage_of("x1")


def test_second_signal_kills_at_once(tmp_path):
    import signal
    import subprocess
    import sys

    code = ("import os, signal, time\n"
            "from c2fnas_auto.search.stop import search_stop_flag\n"
            "flag = search_stop_flag().install()\n"
            "os.kill(os.getpid(), signal.SIGUSR1)\n"
            "assert flag.is_set and flag.signal_name == 'SIGUSR1'\n"
            "print('first signal only set the flag', flush=True)\n"
            "os.kill(os.getpid(), signal.SIGTERM)\n"
            "time.sleep(30)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "first signal only set the flag" in run.stdout, run.stderr
    assert run.returncode == -signal.SIGTERM


def test_stopping_a_worker_already_judged_dead_requeues_nothing_more(tmp_path):
    from optuna.trial import TrialState

    a = _store(tmp_path, "a")
    job = _job()
    assert a.try_claim(job) == job
    a.storage.set_trial_state_values(a._current, TrialState.FAIL)  # what another worker's stale check does
    a.storage.set_trial_state_values(a._worker_trial, TrialState.FAIL)  # and to the worker's own trial
    a.stop()
    assert [t["state"] for t in job_trials(default_url(tmp_path), "T")] == ["FAIL"]
