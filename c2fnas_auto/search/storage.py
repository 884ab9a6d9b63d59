"""Opening the Optuna storage of a search: an SQLite file in the results folder by default,
any database URL (`--storage postgresql://...`) when several nodes share one search.

Only `RDBStorage` records heartbeats in the installed Optuna (5.1: `JournalStorage` has
no `record_heartbeat`), and a killed worker's candidate is found through them, so the
embedded default is SQLite, not a journal file. Heartbeats are timed by the database's
clock (`now()` in SQL): on a server that is one clock for every node; with SQLite it is the
clock of the host running the worker, so the SQLite file is for one host (any number of
processes). SQLite is made safe for several processes here: WAL, a long busy timeout, and
`BEGIN IMMEDIATE` so two workers never both read a waiting trial and both take it; a
transaction that only reads (`reading()`) starts deferred instead, so readers never queue
behind writers or each other (WAL gives them a consistent snapshot).
Nothing read from the storage is unpickled: Optuna keeps params as numbers and
attributes as JSON.
"""

from __future__ import annotations

import logging
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from c2fnas_auto.errors import C2FNASError

DB_FILE = "search.db"
FILES = "files"  # --storage files: the per-candidate files engine (trials.py) instead of Optuna
SQLITE_TIMEOUT_S = 60.0
_READING = threading.local()  # per thread: the heartbeat thread writes while the worker reads


def default_url(search_dir: Path) -> str:
    return f"sqlite:///{Path(search_dir).resolve() / DB_FILE}"


def shown(url: str) -> str:
    """The URL with any password masked (for messages and the report)."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL at all: show it as given
        return url


@contextmanager
def reading() -> Iterator[None]:
    """Storage calls made inside only read: on SQLite their transactions start deferred
    (no write lock). Only for calls that never write: a deferred transaction that writes
    after another worker's commit fails instead of waiting."""
    _READING.depth = getattr(_READING, "depth", 0) + 1
    try:
        yield
    finally:
        _READING.depth -= 1


def _sqlite_setup(engine: Any) -> None:
    """WAL + busy timeout on every connection; every transaction starts with BEGIN IMMEDIATE
    (deferred inside `reading()`)."""
    from sqlalchemy import event

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves (pysqlite's is deferred)
        cur = dbapi_connection.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={int(SQLITE_TIMEOUT_S * 1000)}")
        cur.close()

    def on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN" if getattr(_READING, "depth", 0) else "BEGIN IMMEDIATE")

    event.listen(engine, "connect", on_connect)
    event.listen(engine, "begin", on_begin)
    engine.dispose()  # connections made before the listeners are dropped


def requeue_failed_job(study: Any, trial: Any) -> None:
    """Optuna's `RetryHeartbeatStaleTrialCallback` for job trials only: a job whose worker stopped
    beating is enqueued again (fail_stale_trials fails each stale trial in one transaction
    that only one worker wins, so the copy is made exactly once). Worker trials are not jobs."""
    import optuna

    if "job" in trial.user_attrs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.RetryHeartbeatStaleTrialCallback()(study, trial)


def open_storage(url: str, heartbeat_interval: int, grace_period: int) -> Any:
    """An `optuna.storages.RDBStorage` with heartbeats; a killed worker's job is failed
    after `grace_period` seconds without a heartbeat and requeued (once) by
    `RetryHeartbeatStaleTrialCallback`. Bad URL or unreachable server: one-line error naming it."""
    import optuna

    optuna.logging.set_verbosity(logging.WARNING)
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
        if url.startswith("sqlite:///"):
            Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():  # heartbeats: "experimental" since Optuna 2.9, unchanged since
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=heartbeat_interval,
                                                 grace_period=grace_period,
                                                 heartbeat_stale_trial_callback=requeue_failed_job)
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy, driver and Optuna raise many kinds
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise C2FNASError(f"--storage {shown(url)}: cannot open the search storage ({first})") from None
    if url.startswith("sqlite"):
        _sqlite_setup(storage.engine)
    return storage


def cached(storage: Any) -> Any:
    """Optuna's caching wrapper (what `create_study` uses itself): finished trials, which
    never change, are read from the database once; running and waiting ones every time."""
    import optuna

    return optuna.storages.get_storage(storage)
