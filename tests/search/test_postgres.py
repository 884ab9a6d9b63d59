"""Two workers share one search through a real PostgreSQL (`--storage URL`), started from
the `pgserver` package in a fixture; skipped, saying why, only where that server cannot start."""

from __future__ import annotations

import json
import time

import pytest

from c2fnas_auto.search.optuna_trials import job_trials
from c2fnas_auto.search.storage import JOURNAL_FILE

from .test_distributed import SETTINGS, _check_exactly_once, _finish, _start, _workers


@pytest.fixture(scope="module")
def postgres_url(tmp_path_factory):
    try:
        import pgserver
        import psycopg  # noqa: F401 - the driver SQLAlchemy uses for postgresql:// URLs
    except ImportError as exc:
        pytest.skip(f"no PostgreSQL for the test: {exc} (pip install -e '.[test]')")
    try:
        server = pgserver.get_server(tmp_path_factory.mktemp("pg"), cleanup_mode="stop")
    except Exception as exc:  # noqa: BLE001 - initdb/postgres refused to start here
        pytest.skip(f"pgserver could not start PostgreSQL here: {str(exc).splitlines()[0] if str(exc) else exc!r}")
    yield server.get_uri()
    server.cleanup()


def test_two_workers_share_a_search_on_postgresql(tmp_path, postgres_url):
    opts = {"sleep": 0.1, "storage": postgres_url, "hold": True}
    settings = json.dumps(SETTINGS)
    main = _start(tmp_path, settings, opts)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (tmp_path / "search" / "state.json").exists():
        time.sleep(0.05)
    joiner = _start(tmp_path, settings, {**opts, "join": True})
    while time.monotonic() < deadline and len(list(tmp_path.glob("waiting-*"))) < 2:
        time.sleep(0.05)
    (tmp_path / "go").touch()  # both take their first job together
    _finish(main, joiner)
    workers = _workers(tmp_path)
    assert all(w["coarse"] for w in workers), "both workers ran coarse candidates"
    _check_exactly_once(tmp_path, workers)
    assert not (tmp_path / "search" / JOURNAL_FILE).exists(), "nothing stored in the embedded default"
    trials = job_trials(postgres_url, "T")
    assert trials and not [t for t in trials if t["state"] in ("RUNNING", "WAITING")]
    assert json.loads((tmp_path / "search" / "report.json").read_text())["workers"] == 2
