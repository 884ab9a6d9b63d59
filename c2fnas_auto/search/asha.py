"""The coarse stage's multi-fidelity schedule: asynchronous successive halving (ASHA).

Rung r trains a candidate from scratch for `min_epochs * eta**r` epochs. A candidate is
promotable from rung r when it is among the best `floor(n_r / eta)` of the `n_r`
candidates finished at rung r and has not been promoted yet (Li et al. 2020). A free
worker takes, in this order: an orphaned job (its worker died), the promotable candidate
on the highest rung, or a new candidate for rung 0 (proposed by the evolution), so no
worker ever waits for a rung to fill. The decision is a pure function of what the shared
folder holds (`CoarseView`), which is why resuming mid-rung needs no extra state.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from c2fnas_auto.errors import C2FNASError
from c2fnas_auto.search.jobs import Job
from c2fnas_auto.search.optuna_trials import OptunaTrials

PREFIX = "c"
_JOB = re.compile(r"^c(?P<cand>\d+)-r(?P<rung>\d+)$")


@dataclass(frozen=True)
class Rungs:
    min_epochs: int
    eta: int
    count: int

    def epochs(self, rung: int) -> int:
        return self.min_epochs * self.eta ** rung

    @property
    def top(self) -> int:
        return self.count - 1


def job_id(candidate: int, rung: int) -> str:
    return f"{PREFIX}{candidate:05d}-r{rung}"


def parse_job_id(name: str) -> tuple[int, int]:
    m = _JOB.match(name)
    if m is None:
        raise ValueError(name)
    return int(m["cand"]), int(m["rung"])


def answer_ok(answer: dict[str, Any]) -> bool:
    return answer.get("status") != "skipped" and answer.get("score") is not None


@dataclass
class CoarseView:
    """The coarse stage as the folder shows it: payloads by candidate, answers by job,
    jobs claimed and jobs running (claimed by a live worker, no result)."""

    candidates: dict[int, dict[str, Any]] = field(default_factory=dict)
    answers: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict)
    results: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict)
    claimed: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict)
    running: set[tuple[int, int]] = field(default_factory=set)

    def rung_scores(self, rung: int) -> dict[int, float]:
        return {c: a["score"] for (c, r), a in self.answers.items() if r == rung and answer_ok(a)}

    def orphaned(self) -> list[tuple[int, int]]:
        return sorted(k for k in self.claimed if k not in self.answers and k not in self.running)

    def budget_used(self) -> int:
        """Rung-0 candidates that count: trained (not skipped) or still running."""
        done = sum(1 for (c, r), a in self.answers.items() if r == 0 and answer_ok(a))
        return done + sum(1 for (c, r) in self.claimed if r == 0 and (c, r) not in self.answers)


def read_view(store: OptunaTrials) -> CoarseView:
    view = CoarseView()
    results, claims = store.jobs(PREFIX)
    for name, res in results.items():
        key = parse_job_id(name)
        view.answers[key] = res["answer"]
        view.results[key] = res
        view.candidates.setdefault(key[0], res["payload"])
    for name, (_, claim) in claims.items():
        key = parse_job_id(name)
        view.claimed[key] = claim
        view.candidates.setdefault(key[0], claim["payload"])
    done = set(results)
    view.running = {parse_job_id(n) for n in store.running(claims, done)}
    return view


def promotable(view: CoarseView, rungs: Rungs) -> list[tuple[int, int]]:
    """(candidate, next rung), highest rung first, best score first."""
    out: list[tuple[int, int]] = []
    for rung in range(rungs.top - 1, -1, -1):
        scores = view.rung_scores(rung)
        k = len(scores) // rungs.eta
        ranked = sorted(scores, key=lambda c: (-scores[c], c))[:k]
        out.extend((c, rung + 1) for c in ranked if (c, rung + 1) not in view.claimed)
    return out


@dataclass
class Action:
    kind: str  # "run" | "new" | "wait" | "done"
    key: tuple[int, int] | None = None


def next_action(view: CoarseView, rungs: Rungs, budget: int, max_candidates: int, space_left: bool) -> Action:
    orphans = view.orphaned()
    if orphans:
        return Action("run", orphans[0])
    promo = promotable(view, rungs)
    if promo:
        return Action("run", promo[0])
    if view.budget_used() < budget and len(view.candidates) < max_candidates and space_left:
        return Action("new")
    if view.running:
        return Action("wait")
    return Action("done")


def best_candidate(view: CoarseView) -> tuple[int, int, float] | None:
    """(candidate, rung, score) of the best candidate on the highest rung anyone reached."""
    rungs = sorted({r for (_, r), a in view.answers.items() if answer_ok(a)}, reverse=True)
    if not rungs:
        return None
    scores = view.rung_scores(rungs[0])
    c = sorted(scores, key=lambda c: (-scores[c], c))[0]
    return c, rungs[0], scores[c]


def run_coarse(store: OptunaTrials, rungs: Rungs, budget: int,
               propose: Callable[[int, CoarseView], dict[str, Any] | None],
               evaluate: Callable[[Job], dict[str, Any]],
               on_finish: Callable[[Job, dict[str, Any]], None] | None = None,
               check_stop: Callable[[], None] | None = None, max_candidates: int | None = None) -> CoarseView:
    """Work on the coarse stage until no job is left for anyone; returns the final view.

    `propose(n, view)` gives candidate n's payload (levels, ops, cluster) or None when
    the space is exhausted."""
    check = check_stop or (lambda: None)
    max_candidates = max_candidates or 20 * budget + 100
    space_left = True
    while True:
        view = read_view(store)
        action = next_action(view, rungs, budget, max_candidates, space_left)
        if action.kind == "done":
            return view
        if action.kind == "wait":
            check()
            store.wait()
            continue
        if action.kind == "new":
            n = max(view.candidates, default=-1) + 1
            payload = propose(n, view)
            if payload is None:
                space_left = False
                continue
            key = (n, 0)
        else:
            assert action.key is not None  # a "run" action always names its job
            key = action.key
            payload = view.candidates[key[0]]
        extra = {k: payload[k] for k in ("width_multiplier",) if payload.get(k) is not None}  # equal-cost search
        job = Job(job_id(*key), {**{k: payload[k] for k in ("levels", "ops", "cluster")}, **extra,
                                 "candidate": key[0], "rung": key[1], "epochs": rungs.epochs(key[1])})
        claimed = store.try_claim(job)
        if claimed is None:
            continue  # another worker was faster: look again
        job = claimed  # as stored: a rival's proposal for the same id may have won
        t0 = time.perf_counter()
        answer = dict(evaluate(job))
        answer.setdefault("seconds", time.perf_counter() - t0)
        if store.finish(job, answer) and on_finish is not None:
            on_finish(job, answer)
        check()


def check_rungs(min_epochs: int, eta: int, count: int) -> Rungs:
    if min_epochs < 1:
        raise C2FNASError(f"--min-epochs {min_epochs}: must be at least 1")
    if eta < 2:
        raise C2FNASError(f"--eta {eta}: must be at least 2")
    if count < 1:
        raise C2FNASError(f"--rungs {count}: must be at least 1")
    return Rungs(min_epochs, eta, count)
