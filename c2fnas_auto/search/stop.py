"""Stopping a search cleanly on SIGTERM / SIGUSR1 (cluster preemption, time limits).

The first signal only sets the flag: the worker finishes the candidate it is training,
publishes its result, writes the state atomically and raises `SearchStopped`, which the
CLI turns into `STOPPED_EXIT_CODE` (utils/stop_signals.py). A second signal of either kind
restores the default handlers and re-sends itself: the process dies at once (every file is
written atomically, so even then `--continue` resumes; only the running candidate is lost).
"""

from __future__ import annotations

from c2fnas_auto.utils.stop_signals import StopFlag, Stopped


class SearchStopped(Stopped):
    """A stop signal arrived; everything finished so far is saved."""

    detail = " after the current candidate; state saved, resume with --continue"


def search_stop_flag() -> StopFlag:
    """The flag a search checks after every candidate; a second signal kills at once, since a
    candidate can train for hours."""
    return StopFlag(second_signal_kills=True, error=SearchStopped)
