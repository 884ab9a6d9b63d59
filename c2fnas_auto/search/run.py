"""`SearchRun`: how one worker takes part in a search, as opposed to what the search decides."""

from __future__ import annotations

from dataclasses import dataclass

from c2fnas_auto.errors import C2FNASError
from c2fnas_auto.search.jobs import WorkerOptions
from c2fnas_auto.utils.distributed import DistContext
from c2fnas_auto.utils.stop_signals import StopFlag


@dataclass(frozen=True)
class SearchRun:
    """How this worker starts (`resume`, `overwrite`, `join`), whom it works with (`dist`,
    `storage`, `worker_id`, `workers`), what it shows (`progress`, `lines`) and when it stops
    (`stop`). Kept apart from `SearchSettings` because none of it changes the search's
    decisions: two workers of one search may differ in every field.

    `join=True`: a worker added to a running search (never the main worker). `storage`: an
    Optuna storage shared by the workers, a database URL or a journal file path (None: the
    journal file in the search folder). `stop.check()` runs after every candidate (None: the
    process's signal flag). `dist` None: a single process.
    """

    resume: bool = False
    overwrite: bool = False
    join: bool = False
    dist: DistContext | None = None
    storage: str | None = None
    worker_id: str | None = None
    workers: WorkerOptions | None = None
    progress: bool = True
    lines: bool = True
    stop: StopFlag | None = None

    def check_modes(self) -> None:
        """Refuse contradicting ways of starting a search before anything is opened."""
        if self.resume and self.overwrite:
            raise C2FNASError("--continue and --overwrite contradict each other: choose one")
        if self.join and self.overwrite:
            raise C2FNASError("--join and --overwrite contradict each other: a joining worker never restarts a search")
