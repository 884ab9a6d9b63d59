"""Run a command in a subprocess and measure its wall time and peak memory.

Both memory figures are sampled from /proc every `interval` seconds (Linux only; None
elsewhere), over the command's whole process tree:
- `max_rss_bytes`: the largest resident set of any single process of the run;
- `peak_tree_rss_bytes`: the largest *sum* of proportional set sizes (PSS: pages
  shared by k processes count 1/k to each, so forked workers sharing torch's pages are
  not counted k times; plain RSS where smaps_rollup is missing). Worker pools
  (``-np N``) show up here and not in the first figure.
We do not use the rusage of the child: a child forked from a large parent (this
runner, after an in-process row) reports the parent's resident set as its own maximum.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass
class ProcResult:
    returncode: int
    seconds: float
    max_rss_bytes: int | None
    peak_tree_rss_bytes: int | None
    log: Path


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        # the command name may contain spaces: fields after the last ')'
        fields = stat[stat.rfind(b")") + 2:].split()
        kids.setdefault(int(fields[1]), []).append(int(entry))
    return kids


def _statm_rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", "rb") as fh:
            return int(fh.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def _pss(pid: int) -> int:
    """PSS of one process in bytes (RSS if the kernel has no smaps_rollup; 0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as fh:
            for line in fh:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        pass
    return _statm_rss(pid)


def tree_memory(root: int) -> tuple[int, int]:
    """(summed PSS, largest single RSS) of `root` and all its descendants right now."""
    kids = _children_map()
    total, largest, stack = 0, 0, [root]
    while stack:
        pid = stack.pop()
        total += _pss(pid)
        largest = max(largest, _statm_rss(pid))
        stack.extend(kids.get(pid, []))
    return total, largest


def tree_rss(root: int) -> int:
    """Summed PSS of `root` and all its descendants right now."""
    return tree_memory(root)[0]


class _Sampler(threading.Thread):
    def __init__(self, pid: int, interval: float):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak_tree = 0
        self.peak_single = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            tree, single = tree_memory(self.pid)
            self.peak_tree = max(self.peak_tree, tree)
            self.peak_single = max(self.peak_single, single)
            self.stop.wait(self.interval)


def run_measured(cmd: Sequence[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None,
                 interval: float = 0.2, timeout: float | None = None) -> ProcResult:
    """Run `cmd`, output to `log`; wall time, peak single-process RSS and peak tree PSS."""
    log.parent.mkdir(parents=True, exist_ok=True)
    sample = Path("/proc").is_dir()
    with open(log, "wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        sampler = _Sampler(proc.pid, interval) if sample else None
        if sampler:
            sampler.start()
        deadline = None if timeout is None else t0 + timeout
        while True:
            pid, status = os.waitpid(proc.pid, os.WNOHANG)
            if pid:
                break
            if deadline is not None and time.perf_counter() > deadline:
                proc.kill()
            time.sleep(0.02)
        seconds = time.perf_counter() - t0
        if sampler:
            sampler.stop.set()
            sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
    return ProcResult(returncode=proc.returncode, seconds=seconds,
                      max_rss_bytes=sampler.peak_single if sampler else None,
                      peak_tree_rss_bytes=sampler.peak_tree if sampler else None, log=log)


def tail(path: Path, lines: int = 8) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
