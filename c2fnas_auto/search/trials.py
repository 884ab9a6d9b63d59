"""Per-candidate claim and result files on a shared folder: how workers share one search.

No coordinator and no collective calls. A worker *claims* a job by hard-linking a
finished temporary file to `claims/<job>.a<attempt>.json` (os.link fails if the name
exists, so exactly one worker wins, on any POSIX file system shared by the nodes), runs
it, and publishes `results/<job>.json` the same way (the first result wins; a job is
recorded exactly once). Each worker touches `workers/<id>.json` every few seconds; a
claim whose worker stopped beating (or, on the same host, whose process is gone) is
*orphaned* and the next attempt number may be claimed by anyone. So a killed worker
loses only the job it was running, a slow one holds up nobody, and a worker started
later simply reads the folder and joins in.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
from pathlib import Path
from typing import Any

from c2fnas_auto.search.jobs import Job, WorkerOptions, new_worker_id
from c2fnas_auto.utils.io import atomic_write_json, create_json_once, load_json

CLAIMS, RESULTS, WORKERS, MARKS = "claims", "results", "workers", "marks"
_CLAIM = re.compile(r"^(?P<job>[A-Za-z0-9_-]+)\.a(?P<attempt>\d+)\.json$")


class TrialStore:
    """The shared folder of one search (`<search dir>/trials`)."""

    def __init__(self, folder: Path, worker_id: str | None = None, options: WorkerOptions | None = None) -> None:
        self.folder = Path(folder)
        self.worker_id = worker_id or new_worker_id()
        self.options = options or WorkerOptions()
        self.host = socket.gethostname()
        self._stop = threading.Event()
        self._cache: dict[Path, dict[str, Any]] = {}  # claim and result files never change once written
        self._thread: threading.Thread | None = None
        for sub in (CLAIMS, RESULTS, WORKERS, MARKS):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)

    # ---------------------------------------------------------------- heartbeat
    def _heartbeat_file(self, worker: str) -> Path:
        return self.folder / WORKERS / f"{worker}.json"

    def start(self) -> "TrialStore":
        """Announce this worker and keep its heartbeat fresh from a daemon thread."""
        path = self._heartbeat_file(self.worker_id)
        create_json_once(path, {"worker": self.worker_id, "host": self.host, "pid": os.getpid(),
                                "started": time.time()})
        period = max(0.05, self.options.stale_seconds / 4)

        def beat() -> None:
            while not self._stop.wait(period):
                try:
                    os.utime(path)
                except OSError:  # folder removed under us (overwrite by a new run): stop beating
                    return

        self._thread = threading.Thread(target=beat, name="c2fnas-heartbeat", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def alive(self, worker: str) -> bool:
        """Heartbeat fresh, and on this host the process still exists."""
        path = self._heartbeat_file(worker)
        try:
            age = time.time() - path.stat().st_mtime
            info = load_json(path, "worker heartbeat")
        except (OSError, ValueError):
            return False
        if info.get("host") == self.host and info.get("pid") != os.getpid():
            try:
                os.kill(int(info["pid"]), 0)
            except ProcessLookupError:
                return False
            except PermissionError:  # exists, owned by someone else
                pass
        return age < self.options.stale_seconds

    def workers(self) -> list[str]:
        return sorted(p.stem for p in (self.folder / WORKERS).glob("*.json"))

    # ---------------------------------------------------------------- claims and results
    def _result_file(self, job_id: str) -> Path:
        return self.folder / RESULTS / f"{job_id}.json"

    def _load(self, path: Path, what: str) -> dict[str, Any]:
        if path not in self._cache:
            self._cache[path] = load_json(path, what)
        return self._cache[path]

    def result(self, job_id: str) -> dict[str, Any] | None:
        path = self._result_file(job_id)
        return self._load(path, "trial result") if path.is_file() else None

    def results(self, prefix: str = "") -> dict[str, dict[str, Any]]:
        out = {}
        for p in sorted((self.folder / RESULTS).glob(f"{prefix}*.json")):
            out[p.stem] = self._load(p, "trial result")
        return out

    def claims(self, prefix: str = "") -> dict[str, tuple[int, dict[str, Any]]]:
        """{job: (latest attempt, its claim)}."""
        latest: dict[str, int] = {}
        for p in (self.folder / CLAIMS).glob(f"{prefix}*.json"):
            m = _CLAIM.match(p.name)
            if m and int(m["attempt"]) >= latest.get(m["job"], -1):
                latest[m["job"]] = int(m["attempt"])
        return {job: (a, self._load(self.folder / CLAIMS / f"{job}.a{a}.json", "trial claim"))
                for job, a in sorted(latest.items())}

    def jobs(self, prefix: str) -> tuple[dict[str, dict[str, Any]], dict[str, tuple[int, dict[str, Any]]]]:
        """(results, claims) of the jobs starting with `prefix`."""
        return self.results(prefix), self.claims(prefix)

    def running(self, claims: dict[str, tuple[int, dict[str, Any]]], done: set[str]) -> set[str]:
        """Claimed jobs without a result whose worker is alive."""
        return {j for j, (_, c) in claims.items() if j not in done and self.alive(c["worker"])}

    def try_claim(self, job: Job) -> Job | None:
        """`job` if this worker now owns it (no result yet, no live claim by anyone), else None."""
        if self._result_file(job.id).exists():
            return None
        current = self.claims(job.id + ".").get(job.id)
        attempt = 0
        if current is not None:
            if self.alive(current[1]["worker"]):
                return None
            attempt = current[0] + 1
        won = create_json_once(self.folder / CLAIMS / f"{job.id}.a{attempt}.json",
                               {"job": job.id, "worker": self.worker_id, "attempt": attempt,
                                "payload": job.payload, "claimed_at": time.time()})
        return job if won and not self._result_file(job.id).exists() else None

    def finish(self, job: Job, answer: dict[str, Any]) -> bool:
        """Publish the result; False if another worker's result for this job came first."""
        return create_json_once(self._result_file(job.id), {"job": job.id, "payload": job.payload, "answer": answer,
                                                             "worker": self.worker_id, "finished_at": time.time()})

    # ---------------------------------------------------------------- markers
    def mark(self, name: str, obj: dict[str, Any], replace: bool = False) -> bool:
        """Write a marker once (first writer wins), or always with `replace`."""
        path = self.folder / MARKS / f"{name}.json"
        if replace:
            atomic_write_json(path, obj)
            return True
        return create_json_once(path, obj)

    def marker(self, name: str) -> dict[str, Any] | None:
        path = self.folder / MARKS / f"{name}.json"
        return load_json(path, "search marker") if path.is_file() else None

    def wait(self, seconds: float | None = None) -> None:
        time.sleep(self.options.poll_seconds if seconds is None else seconds)
