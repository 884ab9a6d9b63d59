"""Opening the search's journal file defensively, and the lock its writers take.

A search folder may have been copied, moved, mounted elsewhere or handed over by someone
else, and a worker may have been killed in the middle of a write. Optuna's journal
backend trusts all of that: it appends onto an unterminated last line (after which no
reader can parse the file again), its symlink lock spins without sleeping on a lock
whose link dangles (a folder moved while a worker held it), and it follows a journal
that is a symlink to wherever it points. So, before the journal is opened:

- the journal must be a regular file (not a link) and its lock, when present, Optuna's
  symlink lock; anything else is refused with one line;
- a lock whose link dangles, or which is older than `LOCK_STALE_S`, is removed with a
  warning (a live lock is held for one append, milliseconds);
- a last line without its newline (a writer killed mid-write; that record never
  counted) is moved to `<journal>.cut-<n>` with a warning, under the lock, so nothing
  is ever appended onto it.

`GuardedLock` keeps Optuna's protocol (a symlink named `<journal>.lock`, so workers of
either kind exclude each other) but judges a lock by the link itself (`lstat`), sleeps
between tries, removes a stale lock with a warning, ends the wait with `SearchStopped`
`STOP_WAIT_S` after a stop signal arrived, and repairs a cut last line each time it is taken, before
the append it guards.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from pathlib import Path

from optuna.storages.journal import JournalFileSymlinkLock

from c2fnas_auto.errors import C2FNASError
from c2fnas_auto.search.stop import SearchStopped
from c2fnas_auto.utils.stop_signals import stop_requested

log = logging.getLogger(__name__)

LOCK_SUFFIX = ".lock"  # Optuna's name for the lock next to the journal
LOCK_STALE_S = 30.0  # Optuna's grace period: a lock unchanged this long is abandoned
MAX_SLEEP_S = 0.1
# after a stop signal the wait goes on this long (the result being published still gets its
# chance: a live lock is held for milliseconds), then ends with SearchStopped
STOP_WAIT_S = 2.0
_TAIL_CHUNK = 1 << 16


def _age(st: os.stat_result) -> float:
    return max(0.0, time.time() - st.st_mtime)


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def remove_stale_lock(lock: Path, stale_s: float) -> bool:
    """Remove `lock` (with a warning) when its link dangles or it is older than `stale_s`;
    True if removed. A lock that is neither a symlink nor a regular file is refused."""
    st = _lstat(lock)
    if st is None:
        return False
    if not (stat.S_ISLNK(st.st_mode) or stat.S_ISREG(st.st_mode)):
        raise C2FNASError(f"{lock}: the journal's lock is not a file or a symlink; remove it if no search "
                          "runs on this folder")
    dangling = stat.S_ISLNK(st.st_mode) and not lock.exists()
    age = _age(st)
    if not dangling and age <= stale_s:
        return False
    lock.unlink(missing_ok=True)  # missing: its holder released it meanwhile
    why = "points to a file that does not exist here (a folder moved or mounted elsewhere)" if dangling \
        else f"is {age:.0f} s old (its holder was killed)"
    log.warning("%s: removed a journal lock that %s", lock, why)
    return True


def check_journal_files(journal: Path) -> None:
    """The journal is a regular file or absent, never a link or anything else (a link would
    make the search write outside its folder)."""
    st = _lstat(journal)
    if st is not None and stat.S_ISLNK(st.st_mode):
        raise C2FNASError(f"{journal}: the search journal is a symbolic link (to {os.readlink(journal)}); "
                          "refused: it must be a regular file inside the search folder")
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise C2FNASError(f"{journal}: the search journal is not a regular file")


def set_aside_cut_line(journal: Path) -> int:
    """Move a last line without its newline to `<journal>.cut-<n>` (with a warning); returns
    the bytes moved. Call it holding the lock: a line being written is then never cut."""
    size = journal.stat().st_size if journal.is_file() else 0
    if size == 0:
        return 0
    with open(journal, "rb") as fh:
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return 0
        end = size
        while end > 0:  # find the last newline, reading backwards in chunks
            start = max(0, end - _TAIL_CHUNK)
            fh.seek(start)
            found = fh.read(end - start).rfind(b"\n")
            if found >= 0:
                end = start + found + 1
                break
            end = start
        fh.seek(end)
        tail = fh.read()
    n = 1
    while (aside := journal.with_name(f"{journal.name}.cut-{n}")).exists():
        n += 1
    with open(aside, "xb") as out:
        out.write(tail)
        out.flush()
        os.fsync(out.fileno())
    os.truncate(journal, end)
    log.warning("%s: its last line was cut (a writer was killed mid-write): %d byte(s) moved to %s; the search "
                "goes on without that record", journal, len(tail), aside)
    return len(tail)


class GuardedLock(JournalFileSymlinkLock):
    """Optuna's symlink lock (its public class, as `JournalFileBackend` documents for
    `lock_obj`), judged by the link itself, with sleeps, stale removal, a stop signal
    ending the wait and a cut last line repaired on every acquisition."""

    def __init__(self, journal: Path, stale_s: float | None = None) -> None:
        super().__init__(str(journal), grace_period=None)
        self.journal = Path(journal)
        self.lock = self.journal.with_name(self.journal.name + LOCK_SUFFIX)
        self.stale_s = LOCK_STALE_S if stale_s is None else float(stale_s)

    def acquire(self) -> bool:
        sleep = 0.001
        seen: tuple[float, float] | None = None  # (the lock's mtime, when this process first saw it)
        stop_seen: float | None = None  # when this wait first saw a stop signal
        while True:
            try:
                os.symlink(str(self.journal), self.lock)
            except OSError as err:
                if err.errno != errno.EEXIST:
                    raise
            else:
                try:
                    set_aside_cut_line(self.journal)
                except BaseException:
                    self.release()
                    raise
                return True
            signal_name = stop_requested()
            if signal_name and stop_seen is None:
                stop_seen = time.monotonic()
            if signal_name and time.monotonic() - stop_seen > STOP_WAIT_S:  # type: ignore[operator]
                raise SearchStopped(f"stopped by {signal_name} while waiting for the journal lock {self.lock}; "
                                    "resume with --continue")
            st = _lstat(self.lock)
            if st is not None:
                if seen is None or seen[0] != st.st_mtime:
                    seen = (st.st_mtime, time.monotonic())
                dangling = stat.S_ISLNK(st.st_mode) and not self.lock.exists()
                if dangling or time.monotonic() - seen[1] > self.stale_s:
                    remove_stale_lock(self.lock, stale_s=-1.0)
                    seen, sleep = None, 0.001
                    continue
            time.sleep(sleep)
            sleep = min(sleep * 2, MAX_SLEEP_S)

    def release(self) -> None:
        self.lock.unlink(missing_ok=True)  # missing: removed as stale by another worker


def prepare_journal(journal: Path, stale_s: float | None = None) -> GuardedLock:
    """Check and repair the journal before Optuna opens it; the lock its writers must use
    (`stale_s` defaults to LOCK_STALE_S)."""
    journal = Path(journal)
    stale_s = LOCK_STALE_S if stale_s is None else float(stale_s)
    check_journal_files(journal)
    remove_stale_lock(journal.with_name(journal.name + LOCK_SUFFIX), stale_s)
    lock = GuardedLock(journal, stale_s)
    if journal.is_file() and journal.stat().st_size:
        with open(journal, "rb") as fh:
            fh.seek(-1, os.SEEK_END)
            cut = fh.read(1) != b"\n"
        if cut:
            lock.acquire()  # repairs the cut line under the lock
            lock.release()
    return lock
