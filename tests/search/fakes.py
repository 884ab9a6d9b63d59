"""Deterministic fake evaluators: the search algorithms are tested without training."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

from c2fnas_auto.search.settings import SearchHooks
from c2fnas_auto.search.runner import Proposal

TARGET_LEVELS = (1, 1, 2, 2, 3, 4, 3, 3, 2, 1, 1, 1)
TARGET_OPS = ("2d", "p3d", "3d", "3d", "3d", "2d", "3d", "3d", "p3d", "3d", "2d", "3d")


def topology_score(levels) -> float:
    return 1.0 - sum(abs(a - b) for a, b in zip(levels, TARGET_LEVELS)) / 36.0


def ops_score(ops) -> float:
    return sum(a == b for a, b in zip(ops, TARGET_OPS)) / 12.0


def _noise(key) -> float:
    """A fixed pseudo-random number in [-0.5, 0.5) per candidate."""
    return int(hashlib.sha1(repr(key).encode()).hexdigest()[:8], 16) / 2 ** 32 - 0.5


def rung_score(levels, epochs) -> float:
    """The true score plus noise that shrinks with the training budget (like a short schedule)."""
    return topology_score(levels) + 0.3 * _noise(tuple(levels)) / max(1, epochs or 1)


class Boom(RuntimeError):
    """Stands in for a crash in the middle of a search."""


@dataclass
class FakeHooks:
    """Counts evaluator calls; raises after `fail_after` calls of a stage to simulate a kill;
    `sleep` seconds per coarse epoch make candidates take time (worker tests)."""

    fail_after_coarse: int | None = None
    fail_after_fine: int | None = None
    skip_level4: bool = False
    sleep: float = 0.0
    coarse_calls: list = field(default_factory=list)
    fine_calls: list = field(default_factory=list)
    standalone_calls: list = field(default_factory=list)
    supernet_trainings: int = 0

    def coarse(self, p: Proposal) -> dict:
        if self.fail_after_coarse is not None and len(self.coarse_calls) >= self.fail_after_coarse:
            raise Boom("killed")
        self.coarse_calls.append((p.key(), p.rung))
        if self.sleep:
            time.sleep(self.sleep * (p.epochs or 1))
        if self.skip_level4 and max(p.levels) == 4:
            return {"status": "skipped", "score": None, "reason": "over memory", "params": 1, "flops": 1e9}
        return {"score": rung_score(p.levels, p.epochs), "params": 1000 * max(p.levels),
                "flops": 1e9 * sum(p.levels), "training_bytes": 1e6, "train_seconds": 0.5 * (p.epochs or 1) * 2,
                "train_iterations": (p.epochs or 1) * 2, "score_seconds": 1.0}

    def standalone(self, p: Proposal) -> dict:
        self.standalone_calls.append(p.key())
        return {"score": ops_score(p.ops) + 0.05 * _noise(p.ops), "train_seconds": 1.0, "train_iterations": 2,
                "score_seconds": 1.0}

    def train_supernet(self, levels):
        self.supernet_trainings += 1
        return {"levels": list(levels)}, {"epochs": 1, "seconds": 0.5, "losses": [1.0]}

    def fine_evaluator(self, supernet):
        def evaluate(p: Proposal) -> dict:
            if self.fail_after_fine is not None and len(self.fine_calls) >= self.fail_after_fine:
                raise Boom("killed")
            assert list(p.levels) == supernet["levels"]
            self.fine_calls.append(p.key())
            return {"score": ops_score(p.ops), "flops": 1e9, "params": 10, "training_bytes": 1e6}
        return evaluate

    def hooks(self) -> SearchHooks:
        return SearchHooks(coarse_evaluate=self.coarse, train_supernet=self.train_supernet,
                           fine_evaluator=self.fine_evaluator, standalone_evaluate=self.standalone)
