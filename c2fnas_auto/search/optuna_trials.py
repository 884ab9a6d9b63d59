"""The search's jobs as Optuna trials: how workers share one search.

One study per stage (`<search>/coarse`, `/fine`, `/standalone`, maximise Dice) holds a
trial per attempt at a job: params `levels`/`ops` (the genotype as digits), user attributes
`job` (its id), `payload` (what the evaluator needs), `answer` (Dice, params, FLOPs, memory,
timing), `worker` (who runs it). A worker takes a job by creating a RUNNING trial that names
it (one write, atomic on every storage), then reads the job's trials: if another attempt
finished, or runs under a lower trial number, it gives its own up (FAIL, `duplicate_of`).
Trial numbers follow the order the storage committed the trials, so of attempts made at
the same moment exactly the first runs, and every reader agrees which that is.

Liveness needs no shared clock. Each worker holds a RUNNING trial in `<search>/workers`
whose `beat` attribute a daemon thread raises every `interval` seconds (surviving a failed
write). A reader notes, on its own monotonic clock, when it last saw a worker's beat change;
a worker unchanged for `grace` seconds is dead: its worker trial and every job it was
running are failed (the storage's finished-trial check lets one writer win), and such a job
is taken again like any job without a result, so it runs once more, exactly once. A late
result of a failed attempt is not recorded. Optuna's own heartbeats are not used: the
journal file has none, and on a database they are judged by timestamps, which on SQLite
are each host's clock.

Optuna is imported inside the functions that use it: it costs about 1 s of start-up and
c2fnas_search --help imports this module (through search.settings).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any, Sequence

from c2fnas_auto.search.jobs import Job, WorkerOptions, new_worker_id
from c2fnas_auto.search.storage import open_storage, reading, shown
from c2fnas_auto.search.trial_attrs import usable_trials

STAGES = {"c": "coarse", "f": "fine", "s": "standalone", "r": "coarse_repeat", "q": "standalone_repeat"}
OP_DIGITS = {"p3d": "1", "2d": "2", "3d": "3"}
MARK = "mark:"
MIN_INTERVAL_S = 0.05


def stage_of(job_id: str) -> str:
    if not job_id or job_id[0] not in STAGES:
        raise ValueError(f"job id {job_id!r}: expected to start with one of {', '.join(STAGES)}")
    return STAGES[job_id[0]]


def _params(payload: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The genotype as two Optuna params the dashboard can plot: `levels` and `ops` as
    integers whose decimal digits are the cells (levels 1-4; ops 1 = p3d, 2 = 2d, 3 = 3d).
    Two params, not one per cell: a database writes each param with its own queries (24 per
    job cost 0.15 s on the test machine). The payload stays the truth."""
    # start-up: see the module docstring
    from optuna.distributions import IntDistribution

    params: dict[str, Any] = {}
    dists: dict[str, Any] = {}
    levels = [int(v) for v in payload.get("levels") or []]
    if levels and all(1 <= v <= 9 for v in levels):
        params["levels"] = int("".join(map(str, levels)))
        dists["levels"] = IntDistribution(0, 10 ** len(levels))
    ops = list(payload.get("ops") or [])
    if ops and all(op in OP_DIGITS for op in ops):
        params["ops"] = int("".join(OP_DIGITS[op] for op in ops))
        dists["ops"] = IntDistribution(0, 10 ** len(ops))
    return params, dists


def answer_ok(answer: dict[str, Any]) -> bool:
    return answer.get("status") != "skipped" and answer.get("score") is not None


class OptunaTrials:
    """The jobs of one search (`search` names its studies) in an Optuna storage."""

    def __init__(self, url: str, search: str, worker_id: str | None = None,
                 options: WorkerOptions | None = None) -> None:
        self.options = (options or WorkerOptions()).validate()
        self.grace = float(self.options.stale_seconds)
        self.interval = max(MIN_INTERVAL_S, self.grace / 4)  # >= 2 beats seen within any grace period
        self.url = url
        self.folder = shown(url)  # where the trials are, for messages
        self.search = search
        self.worker_id = worker_id or new_worker_id()
        self.storage = open_storage(url)
        self.heartbeat_errors = 0  # failed heartbeat writes this worker survived
        self._studies: dict[str, Any] = {}
        self._ids: dict[str, int] = {}  # study id by stage (never changes while the search lives)
        self._checked: dict[str, float] = {}  # when each stage's stale jobs were last looked for
        self._seen: dict[str, tuple[Any, float]] = {}  # worker -> (its worker trials as last seen, when they changed)
        self._announced: set[str] = set()  # workers holding a running worker trial, at the last look
        self._current: int | None = None  # trial id of the job this worker runs
        self._current_stage = ""
        self._worker_trial: int | None = None
        self._jobs_run = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- studies
    def study(self, stage: str) -> Any:
        # start-up: see the module docstring
        import optuna

        if stage not in self._studies:
            self._studies[stage] = optuna.create_study(storage=self.storage, study_name=f"{self.search}/{stage}",
                                                       direction="maximize", load_if_exists=True)
        return self._studies[stage]

    def _sid(self, stage: str) -> int:
        if stage not in self._ids:
            self._ids[stage] = self.storage.get_study_id_from_name(self.study(stage).study_name)
        return self._ids[stage]

    def _trials(self, stage: str, states: Sequence[Any] | None = None) -> list[Any]:
        """The stage's trials whose attributes have the types the search writes."""
        sid = self._sid(stage)
        with reading():
            trials = self.storage.get_all_trials(sid, deepcopy=False,
                                                 states=tuple(states) if states is not None else None)
        return usable_trials(trials, f"{self.folder} ({self.search}/{stage})")

    def _job_trials(self, job_id: str) -> list[Any]:
        return sorted((t for t in self._trials(stage_of(job_id)) if t.user_attrs.get("job") == job_id),
                      key=lambda t: t.number)

    def _end(self, trial_id: int, state: Any = None, values: list[float] | None = None) -> bool:
        """End a running trial (FAIL unless `state` says otherwise); False when it had
        finished already (another worker failed it first)."""
        # start-up: see the module docstring
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        try:
            self.storage.set_trial_state_values(trial_id, state or TrialState.FAIL, values)
            return True
        except UpdateFinishedTrialError:
            return False

    # ---------------------------------------------------------------- liveness
    def _observe(self) -> set[str]:
        """The workers this process takes for dead: those without a running worker trial
        (stopped, or failed by another worker), and those whose running worker trials
        (number, beat) have not changed for `grace` seconds of this process's clock (their
        trials are failed here). A worker first seen now counts as alive for `grace`
        seconds; so does one named by a job but never seen announced."""
        # start-up: see the module docstring
        from optuna.trial import TrialState

        now = time.monotonic()
        trials: dict[str, list[Any]] = {}
        for t in self._trials("workers"):
            trials.setdefault(t.user_attrs.get("worker", ""), []).append(t)
        dead = set()
        self._announced = set()
        for worker, ts in trials.items():
            running = [t for t in ts if t.state == TrialState.RUNNING]
            if running:
                self._announced.add(worker)
            if worker == self.worker_id:
                continue
            key = tuple(sorted((t.number, t.user_attrs.get("beat")) for t in running))
            seen = self._seen.get(worker)
            if not running:
                dead.add(worker)
            elif seen is None or seen[0] != key:
                self._seen[worker] = (key, now)
            elif now - seen[1] > self.grace:
                dead.add(worker)
                for t in running:
                    self._end(t._trial_id)
        for worker, (_, since) in self._seen.items():
            if worker not in trials and now - since > self.grace:
                dead.add(worker)
        return dead

    def _unknown(self, workers: set[str]) -> None:
        now = time.monotonic()
        for w in workers:
            self._seen.setdefault(w, ((), now))

    def refresh(self, stage: str) -> None:
        """Fail the running jobs of workers that stopped beating (they are then taken again
        like any job without a result). At most once per heartbeat interval."""
        # start-up: see the module docstring
        from optuna.trial import TrialState

        if time.monotonic() - self._checked.get(stage, -1e9) < self.interval:
            return
        running = self._trials(stage, (TrialState.RUNNING,))
        self._unknown({t.user_attrs.get("worker", "") for t in running})
        dead = self._observe()
        for t in running:
            if t.user_attrs.get("worker", "") in dead:
                self._end(t._trial_id)
        self._checked[stage] = time.monotonic()

    # ---------------------------------------------------------------- heartbeat
    def _announce(self) -> int:
        # start-up: see the module docstring
        from optuna.trial import TrialState, create_trial

        return self.storage.create_new_trial(self._sid("workers"), template_trial=create_trial(
            state=TrialState.RUNNING, user_attrs={"worker": self.worker_id, "host": socket.gethostname(),
                                                  "pid": os.getpid(), "started": time.time(), "beat": 0}))

    def start(self) -> "OptunaTrials":
        """Announce this worker (a RUNNING trial in `<search>/workers`) and keep its beat
        counter rising from a daemon thread."""
        self._worker_trial = self._announce()
        self._thread = threading.Thread(target=self._beat, name="c2fnas-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        # start-up: see the module docstring
        from optuna.exceptions import UpdateFinishedTrialError

        n = 0
        while not self._stop.wait(self.interval):
            n += 1
            try:
                self.storage.set_trial_user_attr(self._worker_trial, "beat", n)
            except UpdateFinishedTrialError:  # judged dead while alive (beats came late): announce again
                try:
                    self._worker_trial = self._announce()
                except Exception:  # noqa: BLE001 - a transient storage error: try at the next beat
                    self.heartbeat_errors += 1
            except Exception:  # noqa: BLE001 - a transient storage error: keep beating
                self.heartbeat_errors += 1

    def stop(self) -> None:
        """End the heartbeat; a job still held (the evaluator raised) is failed at once, so
        another worker takes it; the worker trial completes with the number of jobs run."""
        # start-up: see the module docstring
        from optuna.trial import TrialState

        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._current is not None:
            trial_id, self._current = self._current, None
            self._end(trial_id)
        if self._worker_trial is not None:
            # False when judged dead meanwhile (its beats were late): it already ended as FAIL
            self._end(self._worker_trial, TrialState.COMPLETE, [float(self._jobs_run)])
            self._worker_trial = None

    def alive(self, worker: str) -> bool:
        """Whether `worker` holds a running worker trial whose beat changed within the last
        `grace` seconds (as seen here; one first seen now counts as alive)."""
        dead = self._observe()
        return worker in self._announced and worker not in dead

    def workers(self) -> list[str]:
        return sorted({t.user_attrs.get("worker", "") for t in self._trials("workers")})

    # ---------------------------------------------------------------- reading
    def results(self, prefix: str = "") -> dict[str, dict[str, Any]]:
        """{job: {job, payload, answer, worker, finished_at, trial}}; the first result of a job wins."""
        stages = [stage_of(prefix)] if prefix else list(STAGES.values())
        out: dict[str, dict[str, Any]] = {}
        for stage in stages:
            out.update(_results(self._trials(stage), prefix))
        return dict(sorted(out.items()))

    def result(self, job_id: str) -> dict[str, Any] | None:
        return self.results(job_id).get(job_id)

    def claims(self, prefix: str) -> dict[str, tuple[int, dict[str, Any]]]:
        """{job: (attempt, latest trial as {worker, payload, state, trial})} after failing stale jobs."""
        return self.jobs(prefix)[1]

    def jobs(self, prefix: str) -> tuple[dict[str, dict[str, Any]], dict[str, tuple[int, dict[str, Any]]]]:
        """(results, claims) of the jobs whose id starts with `prefix`, from one read of the
        storage after failing stale jobs: what a worker looks at before taking a job."""
        stage = stage_of(prefix)
        self.refresh(stage)
        trials = self._trials(stage)
        return _results(trials, prefix), _claims(trials, prefix)

    def running(self, claims: dict[str, tuple[int, dict[str, Any]]], done: set[str]) -> set[str]:
        """Jobs without a result whose latest trial runs (a WAITING one is free to take)."""
        return {j for j, (_, c) in claims.items() if j not in done and c["state"] == "RUNNING"}

    # ---------------------------------------------------------------- taking and finishing a job
    def try_claim(self, job: Job) -> Job | None:
        """Take `job` unless an attempt at it runs or finished; the job, or None when another
        worker had it first (then this worker's attempt is given up as a duplicate)."""
        # start-up: see the module docstring
        from optuna.trial import TrialState, create_trial

        live = (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)
        if any(t.state in live for t in self._job_trials(job.id)):
            return None
        params, dists = _params(job.payload)
        trial_id = self.storage.create_new_trial(self._sid(stage_of(job.id)), template_trial=create_trial(
            state=TrialState.RUNNING, params=params, distributions=dists,
            user_attrs={"job": job.id, "payload": job.payload, "worker": self.worker_id,
                        "genotype": " ".join(f"{k} {','.join(map(str, job.payload.get(k) or []))}"
                                             for k in ("levels", "ops"))}))
        trials = self._job_trials(job.id)
        mine = next(t for t in trials if t._trial_id == trial_id)
        rivals = [t for t in trials if t._trial_id != trial_id and (
            t.state in (TrialState.COMPLETE, TrialState.PRUNED)
            or (t.state == TrialState.RUNNING and t.number < mine.number))]
        if rivals:
            self.storage.set_trial_user_attr(trial_id, "duplicate_of", rivals[0].number)
            self._end(trial_id)
            return None
        self._current, self._current_stage = trial_id, stage_of(job.id)
        return job

    def finish(self, job: Job, answer: dict[str, Any]) -> bool:
        """Publish the result; False when this worker's attempt was failed meanwhile (judged
        dead): then another attempt's result counts."""
        # start-up: see the module docstring
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        trial_id, self._current = self._current, None
        if trial_id is None:
            raise RuntimeError(f"{self.folder}: finish({job.id}) without a claimed job")
        try:
            self.storage.set_trial_user_attr(trial_id, "answer", answer)
            if answer_ok(answer):
                self.storage.set_trial_state_values(trial_id, TrialState.COMPLETE, [float(answer["score"])])
            else:
                self.storage.set_trial_state_values(trial_id, TrialState.PRUNED)
        except UpdateFinishedTrialError:
            return False
        self._jobs_run += 1
        return True

    # ---------------------------------------------------------------- markers (study attributes)
    def mark(self, name: str, obj: dict[str, Any], replace: bool = False) -> bool:
        """Write a marker once (first writer wins), or always with `replace`."""
        if not replace and self.marker(name) is not None:
            return False
        self.storage.set_study_user_attr(self._sid("coarse"), MARK + name, obj)
        return True

    def marker(self, name: str) -> dict[str, Any] | None:
        sid = self._sid("coarse")
        with reading():
            return self.storage.get_study_user_attrs(sid).get(MARK + name)

    def wait(self, seconds: float | None = None) -> None:
        time.sleep(self.options.poll_seconds if seconds is None else seconds)


def _results(trials: Sequence[Any], prefix: str) -> dict[str, dict[str, Any]]:
    """The finished jobs among `trials` (one stage's), first result of each job."""
    # start-up: see the module docstring
    from optuna.trial import TrialState

    out: dict[str, dict[str, Any]] = {}
    for t in sorted(trials, key=lambda t: t.number):
        a = t.user_attrs
        if (t.state in (TrialState.COMPLETE, TrialState.PRUNED) and a.get("job", "").startswith(prefix)
                and a["job"] not in out and "answer" in a):
            out[a["job"]] = {"job": a["job"], "payload": a["payload"], "answer": a["answer"],
                             "worker": a.get("worker", ""), "finished_at": _finished_at(t), "trial": t.number}
    return dict(sorted(out.items()))


def _finished_at(trial: Any) -> float:
    """When the job's result was published: the trial's completion time (written by the
    finishing worker in its local time), or the `finished_at` attribute earlier 0.1.0
    development versions wrote (removed in 0.3)."""
    if "finished_at" in trial.user_attrs:
        return float(trial.user_attrs["finished_at"])
    return trial.datetime_complete.timestamp() if trial.datetime_complete is not None else 0.0


def _claims(trials: Sequence[Any], prefix: str) -> dict[str, tuple[int, dict[str, Any]]]:
    """{job: (attempts, the trial that says where the job stands)} among `trials` (one stage's):
    a finished trial, else a running one, else the latest waiting or failed one. Not simply
    the latest: a copy given up as a duplicate (FAIL) after the running one must not make
    the job look orphaned (every worker would try to take it, in a loop, until it finishes)."""
    # start-up: see the module docstring
    from optuna.trial import TrialState

    rank = {TrialState.COMPLETE: 3, TrialState.PRUNED: 3, TrialState.RUNNING: 2, TrialState.WAITING: 1}
    count: dict[str, int] = {}
    latest: dict[str, Any] = {}
    for t in sorted(trials, key=lambda t: t.number):
        job = t.user_attrs.get("job", "")
        if job.startswith(prefix):
            count[job] = count.get(job, 0) + 1
            if job not in latest or rank.get(t.state, 0) >= rank.get(latest[job].state, 0):
                latest[job] = t
    return {job: (count[job] - 1, {"worker": t.user_attrs.get("worker", ""), "payload": t.user_attrs["payload"],
                                   "state": t.state.name, "trial": t.number})
            for job, t in sorted(latest.items())}


def clear_search(url: str, search: str) -> None:
    """Delete the search's studies (--overwrite)."""
    # start-up: see the module docstring
    import optuna

    storage = open_storage(url)
    names = {s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    for stage in (*STAGES.values(), "workers"):
        if f"{search}/{stage}" in names:
            optuna.delete_study(study_name=f"{search}/{stage}", storage=storage)


def has_results(url: str, search: str) -> bool:
    """Whether the storage holds finished jobs of this search (a fresh start must not mix in)."""
    # start-up: see the module docstring
    import optuna

    storage = open_storage(url)
    summaries = optuna.get_all_study_summaries(storage, include_best_trial=False)
    return any(s.study_name.startswith(f"{search}/") and s.study_name != f"{search}/workers" and s.n_trials
               for s in summaries)


def job_trials(url: str, search: str) -> list[dict[str, Any]]:
    """Every job trial of a search as plain dicts (job, stage, state, worker, number,
    duplicate_of, finished_at, seconds): for tests, benchmarks and a look from outside."""
    # start-up: see the module docstring
    import optuna

    storage = open_storage(url)
    names = {s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    out = []
    for stage in STAGES.values():
        if f"{search}/{stage}" not in names:
            continue
        sid = storage.get_study_id_from_name(f"{search}/{stage}")
        for t in usable_trials(storage.get_all_trials(sid, deepcopy=False), f"{shown(url)} ({search}/{stage})"):
            a = t.user_attrs
            out.append({"job": a.get("job", ""), "stage": stage, "state": t.state.name, "worker": a.get("worker", ""),
                        "number": t.number, "duplicate_of": a.get("duplicate_of"),
                        "finished_at": _finished_at(t), "seconds": (a.get("answer") or {}).get("seconds")})
    return out
