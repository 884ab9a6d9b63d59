"""Stopping a search cleanly on SIGTERM / SIGUSR1 (cluster preemption, time limits).

The first signal only sets a flag: the worker finishes the candidate it is training,
publishes its result, writes the state atomically and raises `SearchStopped`, which the
CLI turns into exit code `STOPPED_EXIT_CODE` (3; not 143, so a job script can tell "stopped
cleanly, requeue with --continue" from "killed"). A second signal of either kind restores
the default handlers and re-sends itself: the process dies at once (every file is written
atomically, so even then `--continue` resumes; only the running candidate is lost).
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

from c2fnas_auto.errors import C2FNASError

STOPPED_EXIT_CODE = 3
SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGUSR1", None)) if s is not None)


class SearchStopped(C2FNASError):
    """A stop signal arrived; everything finished so far is saved."""


class StopFlag:
    """Set by a signal (or by hand); `check()` raises `SearchStopped` once it is set."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signal_name = ""
        self._previous: dict[int, Any] = {}

    @property
    def is_set(self) -> bool:
        return self._event.is_set()

    def set(self, name: str = "request") -> None:
        self.signal_name = self.signal_name or name
        self._event.set()

    def check(self) -> None:
        if self.is_set:
            raise SearchStopped(f"stopped by {self.signal_name} after the current candidate; state saved, "
                                "resume with --continue")

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.is_set:  # second signal: give up waiting for the candidate
            self.restore()
            os.kill(os.getpid(), signum)
            return
        self.set(signal.Signals(signum).name)

    def install(self) -> "StopFlag":
        """Handle SIGTERM and SIGUSR1 (main thread only; elsewhere a no-op)."""
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()
