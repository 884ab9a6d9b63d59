"""Opening the search folder's state (resume, overwrite, join) and saving it as the search runs."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from c2fnas_auto.errors import C2FNASError
from c2fnas_auto.search.files import SUPERNET_FILE, TRIALS_DIR
from c2fnas_auto.search.optuna_trials import clear_search, has_results
from c2fnas_auto.search.settings import SearchSettings
from c2fnas_auto.search.state import SearchState, SearchStateError, open_state
from c2fnas_auto.search.storage import shown
from c2fnas_auto.utils.io import remove_stale_temporaries


class Saver:
    """Writes state.json (main worker only): at once when called, at most every
    `interval` seconds through `soon()` after each candidate. The trial files are already
    the durable record; a state.json a few seconds old after a hard kill is rebuilt on resume."""

    def __init__(self, state: SearchState, path: Path, main: bool, interval: float = 2.0) -> None:
        self.state, self.path, self.main, self.interval = state, path, main, interval
        self.last = 0.0

    def __call__(self) -> None:
        if self.main:
            self.state.save(self.path)
            self.last = time.monotonic()

    def due(self) -> bool:
        return self.main and time.monotonic() - self.last >= self.interval

    def soon(self) -> None:
        if self.due():
            self()


def open_search(search_dir: Path, state_path: Path, task_name: str, settings: SearchSettings, resume: bool,
          overwrite: bool, join: bool, url: str) -> dict[str, Any]:
    """The state to work on as a dict (or {"error": ...}); the main worker clears an
    overwritten search first."""
    try:
        if join:
            if not state_path.is_file():
                raise SearchStateError(f"{state_path}: no search to join (start it without --join first)")
            return open_state(state_path, task_name, settings.decisions(), True, False).to_dict()
        remove_stale_temporaries(search_dir)  # left by a writer killed mid-rename
        if not (resume or overwrite or state_path.exists()) and has_results(url, task_name):
            raise SearchStateError(f"{shown(url)} holds results of an earlier search of {task_name}: use --continue "
                                   "to resume it or --overwrite to start again")
        old = search_dir / TRIALS_DIR / "results"
        if resume and old.is_dir() and any(old.iterdir()) and not has_results(url, task_name):
            raise SearchStateError(f"{old.parent} holds trial files of the engine before Optuna, which this version "
                                   "does not read: finish that search with the version that started it, or "
                                   "use --overwrite to search again")
        if overwrite and not resume:
            clear_search(url, task_name)  # first: a storage that cannot be opened leaves the folder as it was
            (search_dir / SUPERNET_FILE).unlink(missing_ok=True)
            shutil.rmtree(search_dir / TRIALS_DIR, ignore_errors=True)
        return open_state(state_path, task_name, settings.decisions(), resume, overwrite).to_dict()
    except C2FNASError as exc:
        return {"error": str(exc)}


def check_same(state: SearchState, field_name: str, new: dict[str, Any], what: str, state_path: Path) -> None:
    """Store `new` in a fresh state; an unfinished one resumed under a different value refuses."""
    new = json.loads(json.dumps(new or {}))  # same JSON types as the stored copy
    old = getattr(state, field_name)
    if not old:
        setattr(state, field_name, new)
    elif new and not state.finished and new != old:
        changed = sorted(k for k in set(new) | set(old) if new.get(k) != old.get(k))
        raise SearchStateError(f"{state_path}: the {what} changed since this search started ({', '.join(changed)}); "
                               "use --overwrite to search again")
