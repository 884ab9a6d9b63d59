"""A search folder from elsewhere, or left by a killed worker: a journal cut mid-line, a
dangling or stale lock, a journal that is a symlink, trials with crafted attributes. Each
attack is built here on a real Optuna journal written by the search's own trial store."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from c2fnas_auto.errors import C2FNASError
from c2fnas_auto.paths import search_results_dir
from c2fnas_auto.search.jobs import Job, WorkerOptions
from c2fnas_auto.search.optuna_trials import OptunaTrials
from c2fnas_auto.search.stop import SearchStopped, StopFlag
from c2fnas_auto.search.storage import JOURNAL_FILE, open_storage
from c2fnas_auto.utils.testing import call_cli, cli_env

PAYLOAD = {"levels": [1, 2, 2, 1], "ops": ["2d", "2d", "2d", "2d"]}


def _publish(journal: Path, search: str, job_id: str) -> None:
    """One finished coarse job, written as a search worker writes it."""
    store = OptunaTrials(str(journal), search, options=WorkerOptions(stale_seconds=60)).start()
    try:
        job = store.try_claim(Job(job_id, dict(PAYLOAD)))
        assert job is not None
        assert store.finish(job, {"score": 0.5, "status": "done"})
    finally:
        store.stop()


def _jobs(journal: Path, search: str) -> set[str]:
    store = OptunaTrials(str(journal), search)
    return set(store.results("c"))


def _search_journal(task) -> Path:
    folder = search_results_dir(task.task_name)
    folder.mkdir(parents=True, exist_ok=True)
    return folder / JOURNAL_FILE


def _search_cli(task):
    """A fresh `c2fnas_search` on a folder that holds an earlier search: it opens the journal,
    then refuses to mix (exit 2) without training anything."""
    return call_cli("search", ["-t", "98", "--device", "cpu", "--no-progress"], cli_env(task.root))


def _refused_to_mix(res) -> None:
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.describe()
    assert res.message_lines()[-1].startswith("c2fnas_search: error: "), res.describe()
    assert "holds results of an earlier search" in res.message_lines()[-1], res.describe()


def test_journal_cut_mid_line_is_set_aside_and_the_search_record_survives(copy_task, caplog):
    journal = _search_journal(copy_task)
    _publish(journal, copy_task.task_name, "c1-0")
    whole = journal.read_bytes()
    cut = b'{"op_code":5,"worker_id":"killed-mid-wr'
    journal.write_bytes(whole + cut)  # a worker killed inside its write

    with caplog.at_level(logging.WARNING):
        t0 = time.monotonic()
        _refused_to_mix(_search_cli(copy_task))
        assert time.monotonic() - t0 < 60
    assert journal.read_bytes() == whole, "the cut line must be set aside, never appended to"
    assert (journal.parent / f"{JOURNAL_FILE}.cut-1").read_bytes() == cut
    assert any("last line was cut" in r.getMessage() for r in caplog.records)

    _publish(journal, copy_task.task_name, "c2-0")  # the search goes on appending
    assert _jobs(journal, copy_task.task_name) == {"c1-0", "c2-0"}  # and every record still reads


def test_a_line_cut_while_the_search_runs_is_set_aside_before_the_next_append(copy_task, caplog):
    journal = _search_journal(copy_task)
    store = OptunaTrials(str(journal), copy_task.task_name, options=WorkerOptions(stale_seconds=60)).start()
    try:
        with open(journal, "ab") as fh:
            fh.write(b'{"op_code":4,"trial_')  # another worker, killed mid-append
        with caplog.at_level(logging.WARNING):
            job = store.try_claim(Job("c3-0", dict(PAYLOAD)))
            store.finish(job, {"score": 0.25, "status": "done"})
    finally:
        store.stop()
    assert journal.read_bytes().endswith(b"\n")
    assert _jobs(journal, copy_task.task_name) == {"c3-0"}
    assert any("last line was cut" in r.getMessage() for r in caplog.records)


def test_dangling_lock_is_removed_at_open_with_a_warning(copy_task, caplog):
    journal = _search_journal(copy_task)
    _publish(journal, copy_task.task_name, "c1-0")
    lock = journal.with_name(JOURNAL_FILE + ".lock")
    os.symlink("/moved/away/search/" + JOURNAL_FILE, lock)  # left by a killed worker, folder since moved
    with caplog.at_level(logging.WARNING):
        t0 = time.monotonic()
        _refused_to_mix(_search_cli(copy_task))
        assert time.monotonic() - t0 < 60
    assert not os.path.lexists(lock)
    assert any("does not exist here" in r.getMessage() for r in caplog.records)


def _append_in_thread(journal: Path, search: str, job_id: str) -> threading.Thread:
    t = threading.Thread(target=_publish, args=(journal, search, job_id), daemon=True)
    t.start()
    return t


def test_lock_dangling_during_the_search_does_not_spin(copy_task, caplog):
    journal = _search_journal(copy_task)
    open_storage(str(journal))  # opened while no lock exists
    lock = journal.with_name(JOURNAL_FILE + ".lock")
    os.symlink("/elsewhere/" + JOURNAL_FILE, lock)
    with caplog.at_level(logging.WARNING):
        worker = _append_in_thread(journal, copy_task.task_name, "c1-0")
        worker.join(timeout=30)
    assert not worker.is_alive(), "the lock wait never ended"
    assert _jobs(journal, copy_task.task_name) == {"c1-0"}


def test_lock_older_than_the_stale_time_is_removed(copy_task, caplog, monkeypatch):
    from c2fnas_auto.search import journal_guard

    journal = _search_journal(copy_task)
    _publish(journal, copy_task.task_name, "c1-0")
    lock = journal.with_name(JOURNAL_FILE + ".lock")
    os.symlink(str(journal), lock)
    old = time.time() - 3600
    os.utime(lock, (old, old), follow_symlinks=False)
    with caplog.at_level(logging.WARNING):
        open_storage(str(journal))
    assert not os.path.lexists(lock)
    assert any("s old" in r.getMessage() for r in caplog.records)

    monkeypatch.setattr(journal_guard, "LOCK_STALE_S", 0.5)  # a live-looking lock held too long
    os.symlink(str(journal), lock)
    worker = _append_in_thread(journal, copy_task.task_name, "c2-0")
    worker.join(timeout=30)
    assert not worker.is_alive()
    assert _jobs(journal, copy_task.task_name) == {"c1-0", "c2-0"}


def test_lock_that_is_a_folder_is_refused(copy_task):
    journal = _search_journal(copy_task)
    journal.with_name(JOURNAL_FILE + ".lock").mkdir()
    with pytest.raises(C2FNASError, match=r"lock is not a file or a symlink"):
        open_storage(str(journal))


def test_sigterm_ends_the_wait_for_a_held_lock(copy_task):
    journal = _search_journal(copy_task)
    storage = open_storage(str(journal))
    lock = journal.with_name(JOURNAL_FILE + ".lock")
    os.symlink(str(journal), lock)  # held by a live worker that never lets go
    stop = StopFlag().install()
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM))
    try:
        timer.start()
        t0 = time.monotonic()
        with pytest.raises(SearchStopped, match="SIGTERM while waiting for the journal lock"):
            storage.create_new_study([], "never-written")
        assert time.monotonic() - t0 < 20
    finally:
        timer.cancel()
        stop.restore()
    assert os.path.islink(lock), "another worker's lock is not taken away on stop"


@pytest.mark.parametrize("exists", [False, True])
def test_symlinked_journal_is_refused_and_nothing_outside_is_written(copy_task, tmp_path, exists):
    journal = _search_journal(copy_task)
    outside = tmp_path / "outside.log"
    if exists:
        outside.write_bytes(b"someone else's file\n")
    os.symlink(outside, journal)
    t0 = time.monotonic()
    res = _search_cli(copy_task)
    assert time.monotonic() - t0 < 60
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.describe()
    (line,) = res.message_lines()
    assert line.startswith("c2fnas_search: error: ") and JOURNAL_FILE in line and "symbolic link" in line, line
    assert outside.exists() == exists
    if exists:
        assert outside.read_bytes() == b"someone else's file\n"


def test_trials_with_crafted_attributes_are_skipped_with_one_warning(copy_task, caplog):
    from optuna.trial import TrialState, create_trial

    journal = _search_journal(copy_task)
    _publish(journal, copy_task.task_name, "c1-0")
    store = OptunaTrials(str(journal), copy_task.task_name)
    sid = store._sid("coarse")
    for attrs in ({"job": 7, "payload": {}, "answer": {"score": 1.0}},
                  {"job": "c9-0", "payload": "not a dict", "answer": {"score": 1.0}},
                  {"job": "c8-0", "payload": {}, "answer": [1.0], "worker": 3},
                  {"job": "c7-0"}):
        store.storage.create_new_trial(sid, template_trial=create_trial(state=TrialState.COMPLETE, value=1.0,
                                                                          user_attrs=attrs))
    with caplog.at_level(logging.WARNING):
        results, claims = store.jobs("c")
        assert set(results) == set(claims) == {"c1-0"}
        assert set(store.results("c")) == {"c1-0"}
    warnings = [r.getMessage() for r in caplog.records if "skipped trial" in r.getMessage()]
    assert len(warnings) == 1 and "job is a int" in warnings[0], warnings


def test_journal_that_is_a_folder_is_refused(copy_task):
    journal = _search_journal(copy_task)
    journal.mkdir()
    with pytest.raises(C2FNASError, match=r"search journal is not a regular file"):
        open_storage(str(journal))


def test_lock_errors_other_than_a_held_lock_reach_the_caller(copy_task, monkeypatch):
    from c2fnas_auto.search import journal_guard

    journal = _search_journal(copy_task)
    lock = journal_guard.GuardedLock(journal)

    def read_only(*_args):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(journal_guard.os, "symlink", read_only)
    with pytest.raises(PermissionError):
        lock.acquire()


def test_a_failed_repair_releases_the_lock(copy_task, monkeypatch):
    from c2fnas_auto.search import journal_guard

    journal = _search_journal(copy_task)
    journal.write_bytes(b'{"op_code":0}\n{"cut')
    lock = journal_guard.GuardedLock(journal)

    def disk_full(_journal):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(journal_guard, "set_aside_cut_line", disk_full)
    with pytest.raises(OSError, match="No space"):
        lock.acquire()
    assert not os.path.lexists(lock.lock)
