"""Answering a generational stage's proposals through the shared trials.

The fine stage (and the stand-alone check) proposes batches (`fine_evolution`); every
worker runs the same deterministic evolution, so all propose the same batch. Proposal i
of a stage becomes job `<prefix><i>` (an Optuna trial): whoever claims it evaluates it and publishes the
result at once; a job with a stored result is answered from it (resume), and a stored
result for another candidate means the folder belongs to other code or settings. A
proposal repeating an earlier one of the stage is `reused` (nothing evaluated).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from c2fnas_auto.search.state import CandidateRecord, SearchStateError
from c2fnas_auto.search.jobs import Job
from c2fnas_auto.search.optuna_trials import STAGES, OptunaTrials

STAGE_PREFIXES = {stage: letter for letter, stage in STAGES.items()}


@dataclass(frozen=True)
class Proposal:
    """What the evolution asks for: a topology with ops, plus where it came from and
    (coarse rung, stand-alone check) how many epochs to train it."""

    levels: tuple[int, ...]
    ops: tuple[str, ...]
    cluster: int | None = None
    generation: int | None = None
    rung: int | None = None
    epochs: int | None = None
    candidate: int | None = None
    seed: int | None = None  # a repeat's training seed (None: the search's seed)
    width_multiplier: float | None = None  # equal-cost search: widths scaled to the budget (None: the plans')

    def key(self) -> tuple:
        return tuple(self.levels), tuple(self.ops)

    def payload(self) -> dict[str, Any]:
        out = {"levels": list(self.levels), "ops": list(self.ops), "cluster": self.cluster,
               "generation": self.generation, "rung": self.rung, "epochs": self.epochs, "candidate": self.candidate}
        if self.seed is not None:  # only when set: the stored payloads of earlier searches stay the same
            out["seed"] = self.seed
        if self.width_multiplier is not None:
            out["width_multiplier"] = self.width_multiplier
        return out

    @classmethod
    def from_payload(cls, d: dict[str, Any]) -> "Proposal":
        return cls(levels=tuple(d["levels"]), ops=tuple(d["ops"]), cluster=d.get("cluster"),
                   generation=d.get("generation"), rung=d.get("rung"), epochs=d.get("epochs"),
                   candidate=d.get("candidate"), seed=d.get("seed"), width_multiplier=d.get("width_multiplier"))


Evaluate = Callable[[Proposal], dict[str, Any]]
JobEvaluate = Callable[[Job], dict[str, Any]]
RESULT_FIELDS = ("status", "score", "params", "flops", "training_bytes", "seconds", "reason", "rank")


def timed(evaluate: Evaluate, rank: int = 0) -> Callable[[Job], dict[str, Any]]:
    """Job -> answer with `seconds` and `rank` filled in."""

    def run(job: Job) -> dict[str, Any]:
        t0 = time.perf_counter()
        ans = dict(evaluate(Proposal.from_payload(job.payload)))
        ans.setdefault("seconds", time.perf_counter() - t0)
        ans.setdefault("rank", rank)
        return ans

    return run


def run_batch(store: OptunaTrials, jobs: Sequence[Job], evaluate: JobEvaluate,
              on_finish: Callable[[Job, dict[str, Any]], None] | None = None,
              check_stop: Callable[[], None] | None = None) -> dict[str, dict[str, Any]]:
    """Work on `jobs` (ids with one prefix letter) with every other worker until all have a
    result; {job: result}. `check_stop()` is called after each job this worker finished and
    while it waits; it raises to stop (the finished job is already published)."""
    check = check_stop or (lambda: None)
    if not jobs:
        return {}
    prefix = jobs[0].id[0]
    while True:
        done, _ = store.jobs(prefix)  # Optuna: stale jobs are failed (requeued) first
        pending = [j for j in jobs if j.id not in done]
        if not pending:
            return {j.id: done[j.id] for j in jobs}
        mine = next((m for j in pending if (m := store.try_claim(j)) is not None), None)
        if mine is None:
            check()
            store.wait()
            continue
        answer = evaluate(mine)
        if store.finish(mine, answer) and on_finish is not None:
            on_finish(mine, answer)
        check()


def record_from_result(index: int, stage: str, result: dict[str, Any]) -> CandidateRecord:
    """A stored trial result (payload + answer) as a state record."""
    p, ans = result["payload"], result["answer"]
    skipped = ans.get("status") == "skipped" or ans.get("score") is None
    return CandidateRecord(index=index, stage=stage, levels=list(p["levels"]), ops=list(p["ops"]),
                           status="skipped" if skipped else "done", score=None if skipped else float(ans["score"]),
                           cluster=p.get("cluster"), generation=p.get("generation"), params=ans.get("params"),
                           flops=ans.get("flops"), training_bytes=ans.get("training_bytes"),
                           seconds=float(ans.get("seconds", 0.0)), reason=str(ans.get("reason", "")),
                           rank=int(ans.get("rank", 0)), extra={k: v for k, v in ans.items() if k not in RESULT_FIELDS},
                           candidate=p.get("candidate"), rung=p.get("rung"), epochs=p.get("epochs"),
                           worker=str(result.get("worker", "")), finished_at=float(result.get("finished_at", 0.0)),
                           seed=p.get("seed"), width_multiplier=p.get("width_multiplier"))


class CandidateRunner:
    """Turns batches of proposals into records, in proposal order (`records` grows)."""

    def __init__(self, store: OptunaTrials, stage: str, evaluate: Evaluate, *, rank: int = 0,
                 on_record: Callable[[CandidateRecord, bool], None] | None = None,
                 on_finish: Callable[[], None] | None = None, check_stop: Callable[[], None] | None = None) -> None:
        self.store = store
        self.stage = stage
        self.prefix = STAGE_PREFIXES[stage]  # job ids start with the stage's letter (optuna_trials.STAGES)
        self.evaluate = timed(evaluate, rank)
        self.on_record = on_record
        self.on_finish = on_finish
        self.check_stop = check_stop
        self.records: list[CandidateRecord] = []
        self.evaluations = 0  # evaluate() calls made by this process
        self._batch: dict[int, Job] = {}

    def job_id(self, index: int) -> str:
        return f"{self.prefix}{index:05d}"

    def run(self, proposals: Sequence[Proposal]) -> list[CandidateRecord]:
        start = len(self.records)
        known = {r.key(): r for r in self.records}
        jobs: dict[int, Job] = {}
        first: dict[tuple, int] = {}
        for i, p in enumerate(proposals):
            if p.key() not in known and p.key() not in first:
                first[p.key()] = start + i
                jobs[start + i] = Job(self.job_id(start + i), p.payload())
        self._batch = jobs
        mine: set[str] = set()

        def evaluate(job: Job) -> dict[str, Any]:
            self.evaluations += 1
            return self.evaluate(job)

        def finished(job: Job, _answer: dict[str, Any]) -> None:
            mine.add(job.id)
            if self.on_finish is not None:
                self.on_finish()

        results = run_batch(self.store, list(jobs.values()), evaluate, finished, self.check_stop)
        self._batch = {}
        out = []
        for i, p in enumerate(proposals):
            index = start + i
            if index in jobs:
                res = results[jobs[index].id]
                stored = (tuple(res["payload"]["levels"]), tuple(res["payload"]["ops"]))
                if stored != p.key():
                    raise SearchStateError(
                        f"{self.store.folder}: {self.stage} candidate #{index} is {list(stored[0])}/{list(stored[1])} "
                        f"but the replay proposed {list(p.levels)}/{list(p.ops)}: the folder was made by other code "
                        "or settings; use --overwrite")
                rec = record_from_result(index, self.stage, res)
                rec.generation = p.generation
                known[p.key()] = rec
                replayed = jobs[index].id not in mine
            else:
                rec = self._reuse(index, known[p.key()], p)  # an earlier proposal (this batch or before)
                replayed = False
            self.records.append(rec)
            out.append(rec)
            if self.on_record:
                self.on_record(rec, replayed)
        return out

    def partial(self) -> list[CandidateRecord]:
        """The records so far plus every result of the running batch already published
        (what the state shows after each candidate)."""
        results = self.store.results(self.prefix) if self._batch else {}
        done = [record_from_result(i, self.stage, results[job.id]) for i, job in sorted(self._batch.items())
                if job.id in results and i >= len(self.records)]
        return list(self.records) + done

    def _reuse(self, index: int, src: CandidateRecord, p: Proposal) -> CandidateRecord:
        return CandidateRecord(index=index, stage=self.stage, levels=list(p.levels), ops=list(p.ops),
                               status="skipped" if src.status == "skipped" else "reused", score=src.score,
                               cluster=p.cluster, generation=p.generation, params=src.params, flops=src.flops,
                               training_bytes=src.training_bytes, seconds=0.0,
                               reason=f"same as candidate #{src.index}", rank=src.rank, extra=dict(src.extra),
                               epochs=src.epochs, worker=src.worker)
