"""The search's jobs as Optuna trials: how workers share one search.

One study per stage (`<search>/coarse`, `/fine`, `/standalone`, maximise Dice) holds a
trial per job: params `levels`/`ops` (the genotype as digits), user attributes `job` (its id),
`payload` (what the evaluator needs), `answer` (Dice, params, FLOPs, memory, timing),
`worker`. A job is created as a WAITING trial (`study.add_trial`) and taken by moving it
to RUNNING (`set_trial_state_values`, which only one worker wins); a worker that took a
job then looks at the job's other trials and gives its own up (FAIL, `duplicate`) if
another is running or finished: each looks after its own write, so of two that raced at
most one runs it. While a job runs, its trial's heartbeat is recorded every few seconds
by a thread that survives a failed write; a job whose heartbeat is older than the grace
period is failed by Optuna (`fail_stale_trials`, database clock) and requeued exactly
once (`storage.requeue_failed_job`). A result is the trial's `answer`; a late result of
a trial already failed is not recorded (the requeued copy's result counts). Each worker
also holds a RUNNING trial in `<search>/workers` (its liveness, for the main worker).
"""

from __future__ import annotations

import os
import socket
import threading
import time
import warnings
from typing import Any, Sequence

from c2fnas_auto.search.jobs import Job, WorkerOptions, new_worker_id
from c2fnas_auto.search.storage import cached, open_storage, reading, requeue_failed_job, shown

STAGES = {"c": "coarse", "f": "fine", "s": "standalone"}
OP_DIGITS = {"p3d": "1", "2d": "2", "3d": "3"}
MARK = "mark:"


def stage_of(job_id: str) -> str:
    if not job_id or job_id[0] not in STAGES:
        raise ValueError(f"job id {job_id!r}: expected to start with one of {', '.join(STAGES)}")
    return STAGES[job_id[0]]


def _params(payload: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The genotype as two Optuna params the dashboard can plot: `levels` and `ops` as
    integers whose decimal digits are the cells (levels 1-4; ops 1 = p3d, 2 = 2d, 3 = 3d).
    Two params, not one per cell: Optuna writes each param with its own queries (24 per job
    cost 0.15 s on the test machine). The payload stays the truth."""
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
        self.options = options or WorkerOptions()
        self.grace = max(2, int(round(self.options.stale_seconds)))
        self.interval = max(1, self.grace // 4)
        self.url = url
        self.folder = shown(url)  # where the trials are, for messages
        self.search = search
        self.worker_id = worker_id or new_worker_id()
        self.storage = cached(open_storage(url, self.interval, self.grace))
        self.heartbeat_errors = 0  # failed heartbeat writes this worker survived
        self._studies: dict[str, Any] = {}
        self._ids: dict[str, int] = {}  # study id by stage (never changes while the search lives)
        self._checked: dict[str, float] = {}  # when each stage's stale jobs were last looked for
        self._current: int | None = None  # trial id of the job this worker runs
        self._current_stage = ""
        self._worker_trial: int | None = None
        self._jobs_run = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- studies
    def study(self, stage: str) -> Any:
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
        sid = self._sid(stage)
        with reading():
            return self.storage.get_all_trials(sid, deepcopy=False,
                                               states=tuple(states) if states is not None else None)

    def _job_trials(self, job_id: str) -> list[Any]:
        return sorted((t for t in self._trials(stage_of(job_id)) if t.user_attrs.get("job") == job_id),
                      key=lambda t: t.number)

    def refresh(self, stage: str) -> None:
        """Fail the jobs whose worker stopped beating; each is requeued once. At most once per
        heartbeat interval: a heartbeat cannot go stale faster than that."""
        import optuna
        from optuna.storages import fail_stale_trials

        if time.monotonic() - self._checked.get(stage, -1e9) < self.interval:
            return
        with warnings.catch_warnings():  # experimental since Optuna 2.9, unchanged since
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            fail_stale_trials(self.study(stage))
        self._checked[stage] = time.monotonic()

    # ---------------------------------------------------------------- heartbeat and liveness
    def start(self) -> "OptunaTrials":
        """Announce this worker (a RUNNING trial in `<search>/workers`) and keep its heartbeat
        and that of the job it runs fresh from a daemon thread."""
        from optuna.trial import TrialState, create_trial

        self._worker_trial = self.storage.create_new_trial(self._sid("workers"), template_trial=create_trial(
            state=TrialState.RUNNING, user_attrs={"worker": self.worker_id, "host": socket.gethostname(),
                                                  "pid": os.getpid(), "started": time.time()}))
        self.storage.record_heartbeat(self._worker_trial)
        self._thread = threading.Thread(target=self._beat, name="c2fnas-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            for trial_id in (self._worker_trial, self._current):
                if trial_id is None:
                    continue
                try:
                    self.storage.record_heartbeat(trial_id)
                except Exception:  # noqa: BLE001 - a transient storage error: keep beating
                    self.heartbeat_errors += 1

    def stop(self) -> None:
        """End the heartbeat; a job still held (the evaluator raised) is failed and requeued
        at once; the worker trial completes with the number of jobs this worker ran."""
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._current is not None:
            trial_id, self._current = self._current, None
            try:
                self.storage.set_trial_state_values(trial_id, TrialState.FAIL)
                requeue_failed_job(self.study(self._current_stage), self.storage.get_trial(trial_id))
            except UpdateFinishedTrialError:
                pass  # already failed as stale by another worker, which requeued it
        if self._worker_trial is not None:
            try:
                self.storage.set_trial_state_values(self._worker_trial, TrialState.COMPLETE, [float(self._jobs_run)])
            except UpdateFinishedTrialError:
                pass  # judged dead meanwhile (its heartbeats were late): it already ended as FAIL
            self._worker_trial = None

    def alive(self, worker: str) -> bool:
        """The worker's trial is still RUNNING after stale ones were failed (database clock)."""
        from optuna.trial import TrialState

        self.refresh("workers")
        return any(t.user_attrs.get("worker") == worker for t in self._trials("workers", (TrialState.RUNNING,)))

    def workers(self) -> list[str]:
        return sorted(t.user_attrs["worker"] for t in self._trials("workers"))

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
    def _enqueue(self, job: Job) -> int:
        """Add `job` as a WAITING trial proposed by this worker; its trial id."""
        from optuna.trial import TrialState, create_trial

        params, dists = _params(job.payload)
        stage = stage_of(job.id)
        return self.storage.create_new_trial(self._sid(stage), template_trial=create_trial(
            state=TrialState.WAITING, params=params, distributions=dists,
            user_attrs={"job": job.id, "payload": job.payload, "worker": self.worker_id,
                        "genotype": " ".join(f"{k} {','.join(map(str, job.payload.get(k) or []))}"
                                             for k in ("levels", "ops"))}))

    def try_claim(self, job: Job) -> Job | None:
        """Take `job` (enqueueing it first when no trial of it waits); the job as stored
        (its payload may be another worker's proposal for the same id), or None."""
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        trials = self._job_trials(job.id)
        if any(t.state != TrialState.WAITING and t.state != TrialState.FAIL for t in trials):
            return None  # running or finished
        waiting = [(t._trial_id, t.user_attrs) for t in trials if t.state == TrialState.WAITING]
        if not waiting:
            waiting = [(self._enqueue(job), {"payload": job.payload, "worker": self.worker_id})]
        for trial_id, attrs in waiting:
            try:
                if self._take(trial_id, job.id, attrs.get("worker") == self.worker_id):
                    self._current, self._current_stage = trial_id, stage_of(job.id)
                    return Job(job.id, attrs["payload"])
            except UpdateFinishedTrialError:  # finished or failed by another worker meanwhile
                continue
        return None

    def _take(self, trial_id: int, job_id: str, named: bool) -> bool:
        """Move waiting trial `trial_id` to RUNNING for this worker (`named`: its `worker`
        attribute already names this worker); False if another worker took it, or took
        another copy of the job at the same moment."""
        from optuna.trial import TrialState

        self.storage.record_heartbeat(trial_id)  # beats before it runs: a kill right after taking it is seen
        if not self.storage.set_trial_state_values(trial_id, TrialState.RUNNING):
            return False
        if not named:
            self.storage.set_trial_user_attr(trial_id, "worker", self.worker_id)
        rivals = [o for o in self._job_trials(job_id) if o._trial_id != trial_id
                  and o.state in (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)]
        if rivals:
            self.storage.set_trial_user_attr(trial_id, "duplicate_of", rivals[0].number)
            self.storage.set_trial_state_values(trial_id, TrialState.FAIL)
            return False
        return True

    def finish(self, job: Job, answer: dict[str, Any]) -> bool:
        """Publish the result; False when this worker's trial was failed meanwhile (judged
        dead and requeued): then the requeued copy's result counts."""
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
    finishing worker in its local time), or the `finished_at` attribute earlier versions wrote."""
    if "finished_at" in trial.user_attrs:
        return float(trial.user_attrs["finished_at"])
    return trial.datetime_complete.timestamp() if trial.datetime_complete is not None else 0.0


def _claims(trials: Sequence[Any], prefix: str) -> dict[str, tuple[int, dict[str, Any]]]:
    """{job: (attempts, the trial that says where the job stands)} among `trials` (one stage's):
    a finished trial, else a running one, else the latest waiting or failed one. Not simply
    the latest: a copy given up as a duplicate (FAIL) after the running one must not make
    the job look orphaned (every worker would try to take it, in a loop, until it finishes)."""
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
    import optuna

    storage = open_storage(url, 1, 2)
    names = {s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    for stage in (*STAGES.values(), "workers"):
        if f"{search}/{stage}" in names:
            optuna.delete_study(study_name=f"{search}/{stage}", storage=storage)


def has_results(url: str, search: str) -> bool:
    """Whether the storage holds finished jobs of this search (a fresh start must not mix in)."""
    import optuna

    storage = open_storage(url, 1, 2)
    summaries = optuna.get_all_study_summaries(storage, include_best_trial=False)
    return any(s.study_name.startswith(f"{search}/") and s.study_name != f"{search}/workers" and s.n_trials
               for s in summaries)


def job_trials(url: str, search: str) -> list[dict[str, Any]]:
    """Every job trial of a search as plain dicts (job, stage, state, worker, number,
    duplicate_of, finished_at, seconds): for tests, benchmarks and a look from outside."""
    import optuna

    storage = open_storage(url, 1, 2)
    names = {s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    out = []
    for stage in STAGES.values():
        if f"{search}/{stage}" not in names:
            continue
        sid = storage.get_study_id_from_name(f"{search}/{stage}")
        for t in storage.get_all_trials(sid, deepcopy=False):
            a = t.user_attrs
            out.append({"job": a.get("job", ""), "stage": stage, "state": t.state.name, "worker": a.get("worker", ""),
                        "number": t.number, "duplicate_of": a.get("duplicate_of"),
                        "finished_at": _finished_at(t), "seconds": (a.get("answer") or {}).get("seconds")})
    return out
