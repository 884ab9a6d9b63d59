"""Opening the Optuna storage of a search: by default Optuna's journal file in the results
folder (no server, any number of processes, and nodes sharing that folder), or any
database URL (`--storage postgresql://...`).

Why the journal file and not SQLite, measured with Optuna 5.1 (documentation/howto/search.md):
a job costs the coarse stage 1.0-1.2 ms on the journal (its storage calls 0.6 ms) and about
10 ms through SQLAlchemy on SQLite, which showed as 2-5% lost worker utilisation with short
candidates; the journal is Optuna's documented storage for NFS, whereas SQLite's
locking is not reliable on network file systems. The journal has no heartbeats, and the
search does not need Optuna's: liveness is a beat counter observed on the reader's own clock
(`optuna_trials.py`), which needs no shared clock on any storage.

An earlier version's `search.db` in the folder is still opened (resume keeps working).
Nothing read from the storage is unpickled (params are numbers, attributes JSON), and a
journal file larger than `MAX_JOURNAL_BYTES` is refused before it is read; links, stale locks
and a cut last line are dealt with before Optuna opens it (`journal_guard.py`).

Optuna and SQLAlchemy are imported inside the functions that use them: together about 1 s
of start-up, and c2fnas_search --help imports this module (through search.settings).
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from c2fnas_auto.errors import C2FNASError

JOURNAL_FILE = "optuna_journal.log"  # optuna-dashboard opens a *.log path as a journal file
LEGACY_DB_FILE = "search.db"  # SQLite default of earlier 0.1.0 development versions, still opened; removed in 0.3
SQLITE_TIMEOUT_S = 60.0
MAX_JOURNAL_BYTES = 1 << 30  # ~100x a large search's journal; a bigger file is not ours
_READING = threading.local()  # per thread: the heartbeat thread writes while the worker reads


def default_url(search_dir: Path) -> str:
    """The journal file in the search folder, or an earlier version's SQLite file there."""
    search_dir = Path(search_dir).resolve()
    legacy = search_dir / LEGACY_DB_FILE
    if legacy.is_file() and not (search_dir / JOURNAL_FILE).exists():
        return f"sqlite:///{legacy}"
    return str(search_dir / JOURNAL_FILE)


def is_journal(url: str) -> bool:
    """A path (no scheme) names a journal file; anything with `://` is a database URL."""
    return "://" not in url


def shown(url: str) -> str:
    """The URL with any password masked (for messages and the report)."""
    if is_journal(url):
        return url
    # start-up: see the module docstring
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
    (deferred inside `reading()`), so two workers never both read a free job and both write."""
    # start-up: see the module docstring
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


def _open_journal(path: Path) -> Any:
    # start-up: see the module docstring
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from c2fnas_auto.search.journal_guard import check_journal_files, prepare_journal

    path.parent.mkdir(parents=True, exist_ok=True)
    check_journal_files(path)  # before anything follows a link
    if path.is_file() and path.stat().st_size > MAX_JOURNAL_BYTES:
        raise C2FNASError(f"{path}: {path.stat().st_size} bytes, more than any search writes "
                          f"({MAX_JOURNAL_BYTES}); not a search journal")
    lock = prepare_journal(path)  # links refused, stale locks and a cut last line cleared
    storage = JournalStorage(JournalFileBackend(str(path), lock_obj=lock))  # Optuna's symlink lock protocol
    storage.get_all_studies()  # reads the file now: a damaged one fails here, with its name
    return storage


def _open_rdb(url: str) -> Any:
    # start-up: see the module docstring
    import optuna

    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
        if url.startswith("sqlite:///"):
            Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
    if url.startswith("sqlite"):
        _sqlite_setup(storage.engine)
    # Optuna's caching wrapper (what `create_study` uses itself): finished trials, which
    # never change, are read from the database once; running ones every time.
    return optuna.storages.get_storage(storage)


def open_storage(url: str) -> Any:
    """An Optuna storage: a journal file for a path, `RDBStorage` for a database URL. A bad
    URL, an unreachable server or a file that is not a journal: one line naming it."""
    # start-up: see the module docstring
    import optuna

    optuna.logging.set_verbosity(logging.WARNING)
    if url == "files":  # not a journal named "files" in the working folder
        raise C2FNASError("--storage files: the per-candidate files engine was removed "
                          "(documentation/studies/search_engine.md); leave --storage out to use Optuna's journal "
                          "file in the search folder")
    try:
        return _open_journal(Path(url)) if is_journal(url) else _open_rdb(url)
    except C2FNASError:
        raise
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy, drivers, JSON and Optuna raise many kinds
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise C2FNASError(f"--storage {shown(url)}: cannot open the search storage ({first})") from None
