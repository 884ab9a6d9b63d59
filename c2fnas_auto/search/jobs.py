"""What a worker runs (`Job`) and how workers notice each other (`WorkerOptions`).

Shared by the trial store (`optuna_trials.py`) and the schedulers (`asha.py`,
`runner.py`), so neither depends on how the trials are stored.
"""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Job:
    """`id` names the job (letters, digits, - and _); `payload` is what the evaluator needs."""

    id: str
    payload: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass
class WorkerOptions:
    """How workers notice each other; no influence on what the search decides."""

    stale_seconds: float = 120.0  # a job whose heartbeat is older than this is failed and requeued
    poll_seconds: float = 1.0  # how often an idle worker looks for new work


def new_worker_id() -> str:
    """host-pid-random: readable in the report, unique even for equal host names and PIDs."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
