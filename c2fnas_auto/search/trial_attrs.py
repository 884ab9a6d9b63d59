"""Which job trials of the storage the search may read: attributes of the types it writes.

The journal or database of a search can come from someone else (a copied folder, a
shared server) and holds whatever was written to it. The readers of `optuna_trials.py`
index `job`, `payload`, `worker` and `answer` directly, so a trial with, say, an integer
`job` would end the search with a traceback. Such trials are skipped instead, with one
warning per storage naming the first of them; every well-typed trial still counts.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

log = logging.getLogger(__name__)

# attribute -> the type the search writes; `answer` only on finished trials
_TYPES: dict[str, type] = {"job": str, "payload": dict, "worker": str, "answer": dict}
_warned: set[str] = set()


def _problem(trial: Any) -> str | None:
    attrs = trial.user_attrs
    for name, kind in _TYPES.items():
        if name in attrs and not isinstance(attrs[name], kind):
            return f"{name} is a {type(attrs[name]).__name__}, not a {kind.__name__}"
    if "job" in attrs and "payload" not in attrs:
        return "it names a job but has no payload"
    return None  # a job trial, or a worker's heartbeat trial (no job)


def usable_trials(trials: Sequence[Any], where: str) -> list[Any]:
    """`trials` without those whose attributes have other types than the search writes
    (one warning per `where`, naming the first skipped trial)."""
    out = []
    for t in trials:
        problem = _problem(t)
        if problem is None:
            out.append(t)
        elif where not in _warned:
            _warned.add(where)
            log.warning("%s: skipped trial %s and any others like it: %s (not written by c2fnas-auto)",
                        where, getattr(t, "number", "?"), problem)
    return out
