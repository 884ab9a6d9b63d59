"""The search state file: settings, clustering, every finished candidate, the winner.

The truth is the search's Optuna trials (`optuna_trials.py`; each result written the moment
its candidate finishes, by whichever worker ran it); `state.json` is the summary the main
worker rebuilds from them after each of its candidates and at the end. Resuming reads
the trials: the coarse schedule decides from what is there (`asha.py`), the fine
stage *replays* (its evolution is a deterministic function of the seed and the scores,
so the i-th proposal is answered from the i-th stored result; a stored result for
another candidate shows the folder belongs to other settings).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from c2fnas_auto.errors import C2FNASError
from c2fnas_auto.utils.io import atomic_write_json, load_json

STATE_VERSION = 2
STAGES = ("coarse", "fine", "standalone", "coarse_repeat", "standalone_repeat")


class SearchStateError(C2FNASError):
    """The search folder holds a state that cannot be resumed with these settings."""


@dataclass
class CandidateRecord:
    """One proposal. status: 'done' (trained/scored), 'skipped' (over a budget, not trained),
    'reused' (same candidate seen before in this stage: its score is copied, nothing trained)."""

    index: int
    stage: str
    levels: list[int]
    ops: list[str]
    status: str
    score: float | None = None
    cluster: int | None = None
    generation: int | None = None
    params: int | None = None
    flops: float | None = None
    training_bytes: float | None = None
    seconds: float = 0.0
    reason: str = ""
    rank: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # evaluator details (train/score seconds, loss)
    candidate: int | None = None  # coarse: the candidate number (one per topology)
    rung: int | None = None  # coarse: successive-halving rung
    epochs: int | None = None  # training epochs of this evaluation (coarse rung, stand-alone)
    worker: str = ""  # which worker ran it (host-pid-token)
    finished_at: float = 0.0  # wall clock when its result was published
    seed: int | None = None  # repeats: the training seed (None: the search's seed)
    width_multiplier: float | None = None  # equal-cost search: the widths it was trained at (None: the plans')

    def key(self) -> tuple:
        return tuple(self.levels), tuple(self.ops)

    @property
    def ok(self) -> bool:
        return self.status in ("done", "reused") and self.score is not None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CandidateRecord":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def best_first(r: CandidateRecord) -> tuple[float, int]:
    """Sort key of the rankings: best score first, an equal score to the earlier proposal (so a
    resumed search ranks as the uninterrupted one); an unscored record sorts last."""
    return (-r.score if r.score is not None else math.inf, r.index)


@dataclass
class SearchState:
    """Everything needed to resume and to report; `settings` are the decisions-relevant options."""

    task_name: str
    settings: dict[str, Any]
    coarse: list[CandidateRecord] = field(default_factory=list)
    fine: list[CandidateRecord] = field(default_factory=list)
    standalone: list[CandidateRecord] = field(default_factory=list)
    # candidates of a stage trained again with another seed: the noise check (noise.py)
    coarse_repeat: list[CandidateRecord] = field(default_factory=list)
    standalone_repeat: list[CandidateRecord] = field(default_factory=list)
    heldout: dict[str, Any] = field(default_factory=dict)  # heldout.HeldOut.to_dict(): never seen by the search
    ranking: dict[str, Any] = field(default_factory=dict)  # Kendall taus (report.ranking_checks)
    noise: dict[str, Any] = field(default_factory=dict)  # per stage, report.noise_checks
    budget: dict[str, Any] = field(default_factory=dict)  # the cost budget both stages kept to
    clusters: dict[str, Any] = field(default_factory=dict)
    plans: dict[str, Any] = field(default_factory=dict)  # patch/batch/network the candidates ran at
    supernet: dict[str, Any] = field(default_factory=dict)
    fine_generations: list[dict[str, Any]] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=lambda: {"clustering": 0.0, "coarse": 0.0,
                                                                     "supernet": 0.0, "fine": 0.0})
    finished: bool = False
    winner: dict[str, Any] | None = None
    version: int = STATE_VERSION

    def records(self, stage: str) -> list[CandidateRecord]:
        if stage not in STAGES:
            raise ValueError(stage)
        return getattr(self, stage)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], path: Path | str = "state.json") -> "SearchState":
        try:
            if d.get("version") != STATE_VERSION:
                raise SearchStateError(f"{path}: state version {d.get('version')} is not {STATE_VERSION} (made before "
                                       "the multi-fidelity search; its winner is in plans.json); "
                                       "rerun without --continue and with --overwrite")
            return cls(task_name=d["task_name"], settings=d["settings"],
                       coarse=[CandidateRecord.from_dict(r) for r in d.get("coarse", [])],
                       fine=[CandidateRecord.from_dict(r) for r in d.get("fine", [])],
                       standalone=[CandidateRecord.from_dict(r) for r in d.get("standalone", [])],
                       coarse_repeat=[CandidateRecord.from_dict(r) for r in d.get("coarse_repeat", [])],
                       standalone_repeat=[CandidateRecord.from_dict(r) for r in d.get("standalone_repeat", [])],
                       heldout=d.get("heldout", {}), ranking=d.get("ranking", {}), noise=d.get("noise", {}),
                       budget=d.get("budget", {}),
                       clusters=d.get("clusters", {}), plans=d.get("plans", {}), supernet=d.get("supernet", {}),
                       fine_generations=d.get("fine_generations", []),
                       stage_seconds=d.get("stage_seconds", {}), finished=bool(d.get("finished", False)),
                       winner=d.get("winner"), version=d["version"])
        except (KeyError, TypeError) as exc:
            raise SearchStateError(f"{path}: malformed search state ({exc!r})") from None

    def save(self, path: Path | str) -> None:
        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: Path | str) -> "SearchState":
        return cls.from_dict(load_json(path, "search state"), path)


def open_state(path: Path, task_name: str, settings: dict[str, Any], resume: bool,
               overwrite: bool) -> SearchState:
    """The state to work on. An existing state is never silently replaced: it needs
    `resume` (same settings required) or `overwrite` (start again)."""
    if path.exists() and not overwrite:
        if not resume:
            raise SearchStateError(f"{path} already exists: use --continue to resume it or --overwrite to start again")
        state = SearchState.load(path)
        changed = sorted(k for k in set(settings) | set(state.settings)
                         if settings.get(k) != state.settings.get(k))
        if changed:
            detail = ", ".join(f"{k}: {state.settings.get(k)!r} -> {settings.get(k)!r}" for k in changed)
            raise SearchStateError(f"{path}: cannot --continue with changed settings ({detail}); "
                                   "use the original values or --overwrite")
        return state
    return SearchState(task_name=task_name, settings=dict(settings))
