"""Answering a stage's proposals: replayed from the state, reused, skipped or evaluated.

This is the only place where `evaluate` is called, so "never re-train a finished
candidate" is enforced here once for both stages and both execution modes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from c2fnas_auto.search.distributed import DistContext
from c2fnas_auto.search.state import CandidateRecord, SearchState, SearchStateError


@dataclass(frozen=True)
class Proposal:
    """What the evolution asks for: a topology with ops, plus where it came from."""

    levels: tuple[int, ...]
    ops: tuple[str, ...]
    cluster: int | None = None
    generation: int | None = None

    def key(self) -> tuple:
        return tuple(self.levels), tuple(self.ops)


Evaluate = Callable[[Proposal], dict[str, Any]]
RESULT_FIELDS = ("status", "score", "params", "flops", "training_bytes", "seconds", "reason", "rank")


class CandidateRunner:
    """Turns batches of proposals into records, in proposal order.

    `evaluate(proposal)` returns a dict with `score` (None or `status="skipped"` with a
    `reason` when a budget rules it out) and optionally params/flops/training_bytes/seconds.
    `save()` is called after each new record (single process) or after each gathered batch
    (torchrun), on rank 0 only. `on_record(record, replayed)` reports progress.
    """

    def __init__(self, state: SearchState, stage: str, evaluate: Evaluate, save: Callable[[], None],
                 dist: DistContext | None = None,
                 on_record: Callable[[CandidateRecord, bool], None] | None = None) -> None:
        self.state = state
        self.stage = stage
        self.evaluate = evaluate
        self.save = save
        self.dist = dist or DistContext()
        self.on_record = on_record
        self.cursor = 0
        self.evaluations = 0  # evaluate() calls made by this process in this run

    @property
    def records(self) -> list[CandidateRecord]:
        return self.state.records(self.stage)

    def run(self, proposals: Sequence[Proposal]) -> list[CandidateRecord]:
        out: list[CandidateRecord] = []
        fresh: list[Proposal] = []
        for p in proposals:  # replay what the state already answers
            if self.cursor + len(out) < len(self.records):
                rec = self.records[self.cursor + len(out)]
                if rec.key() != p.key():
                    raise SearchStateError(
                        f"search state {self.stage} candidate #{rec.index} is {rec.levels}/{rec.ops} but the replay "
                        f"proposed {list(p.levels)}/{list(p.ops)}: the state was made by other code or settings; "
                        "use --overwrite")
                out.append(rec)
                if self.on_record:
                    self.on_record(rec, True)
            else:
                fresh = list(proposals[len(out):])
                break
        self.cursor += len(out)
        if not fresh:
            return out
        known = {self._key(r): r for r in self.records}
        todo: list[Proposal] = []
        for p in fresh:
            if p.key() not in known and p.key() not in {q.key() for q in todo}:
                todo.append(p)
        results: dict[tuple, dict[str, Any]] = {}
        if self.dist.active:
            answers = self.dist.map(self._timed_evaluate, todo)
            results = {p.key(): a for p, a in zip(todo, answers)}
        for p in fresh:
            k = p.key()
            if k in known:
                rec = self._reuse(known[k], p)
            else:
                ans = results[k] if self.dist.active else self._timed_evaluate(p)
                rec = self._record(p, ans)
                known[k] = rec
            self.records.append(rec)
            self.cursor += 1
            out.append(rec)
            if not self.dist.active and self.dist.is_main:
                self.save()
            if self.on_record:
                self.on_record(rec, False)
        if self.dist.active and self.dist.is_main:
            self.save()
        return out

    @staticmethod
    def _key(r: CandidateRecord) -> tuple:
        return tuple(r.levels), tuple(r.ops)

    def _timed_evaluate(self, p: Proposal) -> dict[str, Any]:
        t0 = time.perf_counter()
        ans = dict(self.evaluate(p))
        self.evaluations += 1
        ans.setdefault("seconds", time.perf_counter() - t0)
        ans.setdefault("rank", self.dist.rank)
        return ans

    def _record(self, p: Proposal, ans: dict[str, Any]) -> CandidateRecord:
        skipped = ans.get("status") == "skipped" or ans.get("score") is None
        score = None if skipped else float(ans["score"])
        return CandidateRecord(index=len(self.records), stage=self.stage, levels=list(p.levels), ops=list(p.ops),
                               status="skipped" if skipped else "done", score=score, cluster=p.cluster,
                               generation=p.generation, params=ans.get("params"), flops=ans.get("flops"),
                               training_bytes=ans.get("training_bytes"), seconds=float(ans.get("seconds", 0.0)),
                               reason=str(ans.get("reason", "")), rank=int(ans.get("rank", 0)),
                               extra={k: v for k, v in ans.items() if k not in RESULT_FIELDS})

    def _reuse(self, src: CandidateRecord, p: Proposal) -> CandidateRecord:
        return CandidateRecord(index=len(self.records), stage=self.stage, levels=list(p.levels), ops=list(p.ops),
                               status="skipped" if src.status == "skipped" else "reused", score=src.score,
                               cluster=p.cluster, generation=p.generation, params=src.params, flops=src.flops,
                               training_bytes=src.training_bytes, seconds=0.0,
                               reason=f"same as candidate #{src.index}", rank=src.rank, extra=dict(src.extra))
