"""What a worker runs (`Job`) and how workers notice each other (`WorkerOptions`).

Shared by the trial store (`optuna_trials.py`) and the schedulers (`asha.py`,
`runner.py`), so neither depends on how the trials are stored.
"""

from __future__ import annotations

import math
import os
import secrets
import socket
from dataclasses import dataclass, field
from typing import Any

from c2fnas_auto.errors import C2FNASError


@dataclass(frozen=True)
class Job:
    """`id` names the job (letters, digits, - and _); `payload` is what the evaluator needs."""

    id: str
    payload: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass
class WorkerOptions:
    """How workers notice each other; no influence on what the search decides."""

    stale_seconds: float = 120.0  # a worker whose beat has not changed for this long is dead; its job is rerun
    poll_seconds: float = 1.0  # how often an idle worker looks for new work

    def validate(self) -> "WorkerOptions":
        if not (math.isfinite(self.stale_seconds) and self.stale_seconds > 0):
            raise C2FNASError(f"--stale-seconds {self.stale_seconds}: must be a positive number of seconds")
        return self


def new_worker_id() -> str:
    """host-pid-random: readable in the report, unique even for equal host names and PIDs."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
