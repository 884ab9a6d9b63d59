"""The search state file: every proposed candidate, in proposal order, with its result.

Resuming works by *replay*: the search algorithms are deterministic functions of the
seed and of the scores they receive, so a rerun proposes the same candidates in the same
order; the i-th proposal of a stage is answered from the i-th stored record instead of
being evaluated again. Nothing about the random generators needs to be pickled, and a
record that does not match its replayed proposal shows the state belongs to other settings.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from c2fnas_auto.errors import C2FNASError
from c2fnas_auto.utils.io import atomic_write_json, load_json

STATE_VERSION = 1
STAGES = ("coarse", "fine")


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

    def key(self) -> tuple:
        return tuple(self.levels), tuple(self.ops)

    @property
    def ok(self) -> bool:
        return self.status in ("done", "reused") and self.score is not None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CandidateRecord":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class SearchState:
    """Everything needed to resume and to report; `settings` are the decisions-relevant options."""

    task_name: str
    settings: dict[str, Any]
    coarse: list[CandidateRecord] = field(default_factory=list)
    fine: list[CandidateRecord] = field(default_factory=list)
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
        return self.coarse if stage == "coarse" else self.fine

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], path: Path | str = "state.json") -> "SearchState":
        try:
            if d.get("version") != STATE_VERSION:
                raise SearchStateError(f"{path}: state version {d.get('version')} is not {STATE_VERSION}; "
                                       "rerun without --continue and with --overwrite")
            return cls(task_name=d["task_name"], settings=d["settings"],
                       coarse=[CandidateRecord.from_dict(r) for r in d.get("coarse", [])],
                       fine=[CandidateRecord.from_dict(r) for r in d.get("fine", [])],
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
