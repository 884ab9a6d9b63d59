"""The one stop flag for long runs (training, search): SIGTERM and SIGUSR1, and the exit code after them.

Cluster schedulers send SIGTERM before preempting a job and, with `--signal=USR1@SECONDS`,
SIGUSR1 ahead of its time limit. The first signal only sets the flag; the run finishes
its unit of work (a training iteration, a search candidate), saves and stops. With
`second_signal_kills` a second signal restores the previous handlers and re-sends itself,
so an impatient user (or scheduler) still kills the process at once.

After a stop both CLIs exit with `STOPPED_EXIT_CODE` (3, as the README and the cluster guide
say): not 0, not 1 (a crash) and not 143 (killed by SIGTERM), so a job script can tell "stopped
cleanly, requeue with --continue" from every other ending.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

from c2fnas_auto.errors import C2FNASError

STOPPED_EXIT_CODE = 3

_INSTALLED: list["StopFlag"] = []  # flags bracketing a run in this process (`stop_requested`)

STOP_SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGUSR1", None))
                     if s is not None)


class Stopped(C2FNASError):
    """A stop signal arrived and the run saved what it had; `detail` says what (per kind of run)."""

    detail = ""

    def __init__(self, signal_name: str) -> None:
        super().__init__(f"stopped by {signal_name}{self.detail}")
        self.signal_name = signal_name


class StopFlag:
    """Set by the first stop signal (or by `set()`); `install()` / `restore()` bracket a run, and
    `check()` raises `error` (a `Stopped`) once the flag is set."""

    def __init__(self, second_signal_kills: bool = False, error: type[Stopped] = Stopped) -> None:
        self.second_signal_kills = second_signal_kills
        self.error = error
        self.signal_name = ""
        self._event = threading.Event()
        self._previous: dict[int, Any] = {}

    @property
    def is_set(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self.is_set:
            raise self.error(self.signal_name)

    def set(self, name: str = "request") -> None:
        self.signal_name = self.signal_name or name
        self._event.set()

    def install(self) -> "StopFlag":
        """Catch the stop signals (only the main thread may; elsewhere this is a no-op)."""
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
            _INSTALLED.append(self)
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        if self in _INSTALLED:
            _INSTALLED.remove(self)

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.is_set:
            if self.second_signal_kills:  # give up waiting for the running unit of work
                self.restore()
                os.kill(os.getpid(), signum)
            return
        self.set(signal.Signals(signum).name)


def stop_requested() -> str:
    """The name of the stop signal an installed flag caught ('' when none): for waits deep
    inside a library call (a journal lock) that cannot be handed the run's flag."""
    return next((f.signal_name for f in _INSTALLED if f.is_set), "")
