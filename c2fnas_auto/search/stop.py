"""Stopping a search cleanly on SIGTERM / SIGUSR1 (cluster preemption, time limits).

The first signal only sets a flag: the worker finishes the candidate it is training,
publishes its result, writes the state atomically and raises `SearchStopped`, which the
CLI turns into exit code `STOPPED_EXIT_CODE` (3; not 143, so a job script can tell "stopped
cleanly, requeue with --continue" from "killed"). A second signal of either kind restores
the default handlers and re-sends itself: the process dies at once (every file is written
atomically, so even then `--continue` resumes; only the running candidate is lost).
"""

from __future__ import annotations

from c2fnas_auto.errors import C2FNASError
from c2fnas_auto.utils.stop_signals import StopFlag as _SignalFlag  # shared with training

STOPPED_EXIT_CODE = 3


class SearchStopped(C2FNASError):
    """A stop signal arrived; everything finished so far is saved."""


class StopFlag(_SignalFlag):
    """The shared flag with a second signal killing at once; `check()` raises `SearchStopped`."""

    def __init__(self) -> None:
        super().__init__(second_signal_kills=True)

    def check(self) -> None:
        if self.is_set:
            raise SearchStopped(f"stopped by {self.signal_name} after the current candidate; state saved, "
                                "resume with --continue")
