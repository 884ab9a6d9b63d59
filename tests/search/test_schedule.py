"""Kendall tau-b, the successive-halving rules and the jobs as Optuna trials (no training)."""

from __future__ import annotations

import json
import math
import time

import pytest

from c2fnas_auto.search.asha import (CoarseView, Rungs, best_candidate, job_id, next_action, promotable,
                                     read_view, run_coarse)
from c2fnas_auto.search.kendall import kendall_tau_b
from c2fnas_auto.errors import C2FNASError
from c2fnas_auto.search.jobs import Job, WorkerOptions
from c2fnas_auto.search.optuna_trials import OptunaTrials, job_trials, stage_of
from c2fnas_auto.search.storage import default_url, shown
from c2fnas_auto.search.trials import TrialStore

FAST = WorkerOptions(stale_seconds=2, poll_seconds=0.02)
FILES_FAST = WorkerOptions(stale_seconds=0.4, poll_seconds=0.02)


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
    assert next_action(_view(full, claimed=[(4, 0), (1, 1)], running=[(4, 0), (1, 1)]), rungs, 4, 100, True).kind == "wait", \
        "a running rung-0 candidate counts against the budget"
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


def test_claims_are_exclusive_and_a_dead_workers_job_is_requeued_once(tmp_path):
    a, b = _store(tmp_path, "hostA-1-aa"), _store(tmp_path, "hostA-1-bb")
    job = _job()
    assert a.try_claim(job) == job and b.try_claim(job) is None, "one claim per job"
    a._stop.set()  # worker a hangs or dies: its heartbeats stop, nothing else happens
    a._thread.join()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not read_view(b).orphaned():
        b.wait(0.2)
    v = read_view(b)
    assert v.orphaned() == [(0, 0)], "failed by Optuna's heartbeat check, requeued as a waiting trial"
    assert b.try_claim(job) == job, "the requeued job is taken again"
    assert b.finish(job, {"score": 0.5})
    assert not a.finish(job, {"score": 0.1}), "a late result of the dead worker is not recorded"
    assert b.result(job.id)["answer"]["score"] == 0.5
    assert b.result(job.id)["worker"] == "hostA-1-bb", "the requeued copy names the worker that took it"
    assert b.try_claim(job) is None, "finished jobs are never claimed"
    for _ in range(3):
        read_view(b)  # failing stale trials again requeues nothing more
    states = sorted(t["state"] for t in job_trials(default_url(tmp_path), "T") if t["job"] == job.id)
    assert states == ["COMPLETE", "FAIL"], "requeued exactly once"
    b.stop()


def test_two_workers_taking_copies_of_one_job_at_once_run_it_once(tmp_path, monkeypatch):
    a, b = _store(tmp_path, "a"), _store(tmp_path, "b")
    job = _job()
    a._enqueue(job)
    a._enqueue(job)  # both workers enqueued it at the same moment: two waiting copies
    beat = b.storage.record_heartbeat

    def rival_takes_the_other_copy(trial_id):  # a takes a copy between b's look and b's take
        monkeypatch.setattr(b.storage, "record_heartbeat", beat)
        assert a.try_claim(job) == job
        beat(trial_id)

    monkeypatch.setattr(b.storage, "record_heartbeat", rival_takes_the_other_copy)
    assert b.try_claim(job) is None, "b sees a's running copy after taking its own and gives its own up"
    trials = sorted(job_trials(default_url(tmp_path), "T"), key=lambda t: t["state"])
    assert [(t["state"], t["worker"]) for t in trials] == [("FAIL", "b"), ("RUNNING", "a")]
    assert trials[0]["duplicate_of"] == trials[1]["number"]
    v = read_view(b)
    assert v.running == {(0, 0)} and v.orphaned() == [], "the given-up copy does not make the job look orphaned"
    assert a.finish(job, {"score": 1.0})
    a.stop()
    b.stop()


def test_liveness_transient_heartbeat_error_and_a_crash_mid_job(tmp_path, monkeypatch):
    me = _store(tmp_path, "me", WorkerOptions(stale_seconds=2, poll_seconds=0.01))
    assert me.alive("me") and not me.alive("nobody")
    calls = []
    beat = me.storage.record_heartbeat

    def flaky(trial_id):
        calls.append(trial_id)
        if len(calls) == 1:
            raise OSError("database briefly unreachable")
        beat(trial_id)

    monkeypatch.setattr(me.storage, "record_heartbeat", flaky)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(calls) < 4:
        time.sleep(0.1)
    assert me.heartbeat_errors == 1 and me._thread.is_alive(), "one failed write does not stop the heartbeat"
    time.sleep(2.5)
    assert me.alive("me"), "still alive past the grace period"
    job = _job(1)
    assert me.try_claim(job) == job
    me.stop()  # the evaluator raised: the held job is failed and requeued at once
    assert not me.alive("me"), "a stopped worker's trial is complete"
    states = sorted(t["state"] for t in job_trials(default_url(tmp_path), "T"))
    assert states == ["FAIL", "WAITING"]


def test_sqlite_readers_wait_for_no_writer_and_writers_still_queue(tmp_path):
    import sqlite3
    import threading

    store = _store(tmp_path, "r", WorkerOptions(stale_seconds=60, poll_seconds=0.02))
    store.try_claim(_job())
    read_view(store)  # stale jobs looked for (under the write lock): not again for a heartbeat interval (15 s)
    lock = sqlite3.connect(tmp_path / "search.db", isolation_level=None)
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


def test_bad_storage_and_job_ids_are_one_line_errors(tmp_path):
    with pytest.raises(C2FNASError, match=r"--storage nosuchdb://x: cannot open the search storage"):
        OptunaTrials("nosuchdb://x", "T")
    assert shown("not a url") == "not a url"
    assert shown("postgresql://u:secret@h/db") == "postgresql://u:***@h/db"
    with pytest.raises(ValueError, match="job id 'x1'"):
        stage_of("x1")


def test_second_signal_kills_at_once(tmp_path):
    import signal
    import subprocess
    import sys

    code = ("import os, signal, time\n"
            "from c2fnas_auto.search.stop import StopFlag\n"
            "flag = StopFlag().install()\n"
            "os.kill(os.getpid(), signal.SIGUSR1)\n"
            "assert flag.is_set and flag.signal_name == 'SIGUSR1'\n"
            "print('first signal only set the flag', flush=True)\n"
            "os.kill(os.getpid(), signal.SIGTERM)\n"
            "time.sleep(30)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "first signal only set the flag" in run.stdout, run.stderr
    assert run.returncode == -signal.SIGTERM


def test_a_job_finished_by_another_worker_while_being_taken_is_left_alone(tmp_path, monkeypatch):
    a, b = _store(tmp_path, "a"), _store(tmp_path, "b")
    job = _job()
    a._enqueue(job)
    beat = b.storage.record_heartbeat

    def rival_runs_it_first(trial_id):
        monkeypatch.setattr(b.storage, "record_heartbeat", beat)
        assert a.try_claim(job) == job and a.finish(job, {"score": 0.3})
        beat(trial_id)

    monkeypatch.setattr(b.storage, "record_heartbeat", rival_runs_it_first)
    assert b.try_claim(job) is None
    assert b.result(job.id)["worker"] == "a"
    a.stop()
    b.stop()


def test_stopping_a_worker_already_judged_dead_requeues_nothing_more(tmp_path):
    from optuna.trial import TrialState

    a = _store(tmp_path, "a")
    job = _job()
    assert a.try_claim(job) == job
    a.storage.set_trial_state_values(a._current, TrialState.FAIL)  # what another worker's stale check does
    a.storage.set_trial_state_values(a._worker_trial, TrialState.FAIL)  # and to the worker's own trial
    a.stop()
    assert [t["state"] for t in job_trials(default_url(tmp_path), "T")] == ["FAIL"]


def test_files_engine_claims_are_exclusive_and_orphans_are_retaken(tmp_path):
    a = TrialStore(tmp_path, "hostA-1-aa", FILES_FAST).start()
    b = TrialStore(tmp_path, "hostA-1-bb", FILES_FAST).start()
    job = Job(job_id(0, 0), {"levels": [1] * 12, "ops": ["3d"] * 12, "cluster": 0, "candidate": 0, "rung": 0,
                            "epochs": 1})
    assert a.try_claim(job) == job and b.try_claim(job) is None, "one claim per job"
    a.stop()  # worker a dies: its heartbeat goes stale
    time.sleep(FILES_FAST.stale_seconds + 0.2)
    v = read_view(b)
    assert v.orphaned() == [(0, 0)]
    assert b.try_claim(job) == job, "the orphaned job is claimed again (attempt 1)"
    assert b.finish(job, {"score": 0.5})
    assert not a.finish(job, {"score": 0.1}), "a late result of the dead worker is not recorded twice"
    assert b.result(job.id)["answer"]["score"] == 0.5
    assert b.try_claim(job) is None, "finished jobs are never claimed"
    b.stop()


def test_files_engine_liveness_missing_dead_foreign_and_removed_folder(tmp_path, monkeypatch):
    import os

    store = TrialStore(tmp_path / "t", "me", WorkerOptions(stale_seconds=60, poll_seconds=0.01)).start()
    assert store.alive("me") and not store.alive("nobody"), "no heartbeat file: gone"
    (tmp_path / "t" / "workers" / "ghost.json").write_text(json.dumps({"host": store.host, "pid": 2 ** 22 + 12345}))
    assert not store.alive("ghost"), "same host, process gone: gone at once"
    (tmp_path / "t" / "workers" / "other.json").write_text(json.dumps({"host": store.host, "pid": 1}))

    def foreign(pid, sig):
        raise PermissionError("another user's process")

    monkeypatch.setattr(os, "kill", foreign)
    assert store.alive("other"), "a process we may not signal exists: its heartbeat decides"
    store.stop()
    fast = TrialStore(tmp_path / "u", "x", WorkerOptions(stale_seconds=0.2, poll_seconds=0.01)).start()
    import shutil

    shutil.rmtree(tmp_path / "u")  # the folder is removed under a beating worker (another run's --overwrite)
    fast._thread.join(timeout=5)
    assert not fast._thread.is_alive(), "the heartbeat thread ends instead of raising"
    fast.stop()
