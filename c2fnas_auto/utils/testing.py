"""Helpers for the reliability suite: run the real CLIs, kill them mid-way, compare folders.

The reliability tests hold the pipeline to its promises from the outside, the way a user
or a cluster scheduler meets it: a command is started, maybe killed with SIGKILL, started
again, and the files on disk are inspected. These helpers keep that machinery in one place
so each test reads as the scenario it checks. Nothing here is used by the pipeline itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import os
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

from c2fnas_auto.utils.io import TMP_MARKER

ROOT_VARS = ("C2FNAS_raw", "C2FNAS_preprocessed", "C2FNAS_results")
# Keep child processes to one thread each: CI and the dev box have two cores in all.
_THREAD_VARS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


@dataclass
class CliResult:
    """What a command left for the user: exit code and both streams."""

    name: str
    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    def describe(self) -> str:
        """The whole run as text, for assertion messages."""
        return (f"c2fnas {self.name} {' '.join(self.args)} -> rc {self.returncode}\n"
                f"--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}")

    def message_lines(self) -> list[str]:
        """stderr lines that are messages, not tqdm progress redraws."""
        lines = []
        for raw in self.stderr.replace("\r", "\n").splitlines():
            line = raw.strip()
            if not line or "%|" in line or line.endswith("it/s]") or "s/it]" in line:
                continue
            lines.append(line)
        return lines


def cli_env(root: str | os.PathLike | None = None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """os.environ with the three C2FNAS roots under `root` (raw/, preprocessed/, results/)."""
    env = dict(os.environ)
    env.update(_THREAD_VARS)
    env["PYTHONUNBUFFERED"] = "1"
    if root is not None:
        root = Path(root)
        for var, sub in zip(ROOT_VARS, ("raw", "preprocessed", "results")):
            env[var] = str(root / sub)
    if extra:
        env.update(extra)
    return env


def cli_command(name: str, args: Sequence[str | os.PathLike]) -> list[str]:
    """`python -m c2fnas_auto.cli.<name> args...` with the running interpreter."""
    return [sys.executable, "-m", f"c2fnas_auto.cli.{name}", *[str(a) for a in args]]


def run_cli(name: str, args: Sequence[str | os.PathLike], env: Mapping[str, str], timeout: float = 600,
            cwd: str | os.PathLike | None = None) -> CliResult:
    """Run one CLI as a separate process to the end (the user's view, exit code included)."""
    proc = subprocess.run(cli_command(name, args), env=dict(env), cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)
    return CliResult(name, [str(a) for a in args], proc.returncode, proc.stdout, proc.stderr)


def call_cli(name: str, args: Sequence[str | os.PathLike], env: Mapping[str, str]) -> CliResult:
    """Run a CLI's `main(argv)` in this process with `env` in place of os.environ.

    Used for the many fast bad-input checks: starting a fresh interpreter costs seconds
    of torch import each. `main` is the same function the console script calls, so the
    exit code and the stderr text are the user's; an exception escaping `main` (which in
    a real process would print a traceback) is turned into exit 1 plus its traceback.
    """
    module = importlib.import_module(f"c2fnas_auto.cli.{name}")
    out, err = io.StringIO(), io.StringIO()
    saved_env, saved_argv0 = dict(os.environ), sys.argv[0]
    os.environ.clear()
    os.environ.update(env)
    sys.argv[0] = f"c2fnas_{name}"
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = module.main([str(a) for a in args])
            except SystemExit as exc:  # argparse usage errors
                rc = exc.code if isinstance(exc.code, int) else 1
            except Exception:  # a bug: what the user would see is a traceback
                traceback.print_exc()
                rc = 1
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        sys.argv[0] = saved_argv0
    return CliResult(name, [str(a) for a in args], int(rc or 0), out.getvalue(), err.getvalue())


def start_cli(name: str, args: Sequence[str | os.PathLike], env: Mapping[str, str],
              log_dir: str | os.PathLike) -> subprocess.Popen:
    """Start a CLI in its own process group (so a kill reaches its workers too).

    Output goes to files in `log_dir` rather than pipes: a child blocked on a full pipe
    would never reach the point where the test wants to kill it.
    """
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    stamp = f"{name}-{time.monotonic_ns()}"
    stdout = open(log_dir / f"{stamp}.out", "w")
    stderr = open(log_dir / f"{stamp}.err", "w")
    proc = subprocess.Popen(cli_command(name, args), env=dict(env), stdout=stdout, stderr=stderr,
                            start_new_session=True)
    proc.log_files = (Path(stdout.name), Path(stderr.name))  # type: ignore[attr-defined]
    stdout.close()
    stderr.close()
    return proc


def finish(proc: subprocess.Popen, timeout: float = 600) -> CliResult:
    """Wait for a process from `start_cli` and collect its result."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        raise
    out_file, err_file = proc.log_files  # type: ignore[attr-defined]
    args = [str(a) for a in proc.args[3:]]  # type: ignore[index]
    name = str(proc.args[2]).rsplit(".", 1)[-1]  # type: ignore[index]
    return CliResult(name, args, proc.returncode, out_file.read_text(), err_file.read_text())


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group this helper started (no clean-up runs, as on a cluster kill)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def kill_when(proc: subprocess.Popen, condition: Callable[[], bool], timeout: float = 300,
              poll: float = 0.02) -> None:
    """SIGKILL `proc` (and its group) as soon as `condition()` holds.

    Raises AssertionError with the process output if it ends first or the condition
    never holds within `timeout` -- then the test did not test what it meant to.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            kill_group(proc)
            return
        if proc.poll() is not None:
            res = finish(proc)
            raise AssertionError(f"process ended before the kill point:\n{res.describe()}")
        time.sleep(poll)
    kill_group(proc)
    raise AssertionError(f"kill point not reached within {timeout:.0f} s")


@dataclass(frozen=True)
class FileState:
    is_dir: bool
    size: int
    mtime_ns: int
    digest: str


def snapshot(root: str | os.PathLike) -> dict[str, FileState]:
    """Every file and folder under `root` with size, mtime and content hash.

    Two equal snapshots mean nothing was created, deleted, modified or even re-written
    (a rewrite with the same bytes still changes mtime_ns).
    """
    root = Path(root)
    state: dict[str, FileState] = {}
    if not root.exists():
        return state
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_dir():
            state[rel] = FileState(True, 0, 0, "")
        else:
            st = p.stat()
            state[rel] = FileState(False, st.st_size, st.st_mtime_ns, file_digest(p))
    return state


def diff_snapshots(before: Mapping[str, FileState], after: Mapping[str, FileState]) -> list[str]:
    """Human-readable differences: '+ added', '- removed', '~ changed'."""
    out = [f"+ {k}" for k in sorted(set(after) - set(before))]
    out += [f"- {k}" for k in sorted(set(before) - set(after))]
    out += [f"~ {k}" for k in sorted(set(before) & set(after)) if before[k] != after[k]]
    return out


def file_digest(path: str | os.PathLike) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def truncate_file(path: str | os.PathLike, keep_fraction: float = 0.5) -> None:
    """Cut a file to a fraction of its bytes: what a non-atomic writer leaves when killed."""
    path = Path(path)
    data = path.read_bytes()
    path.write_bytes(data[: max(1, int(len(data) * keep_fraction))])


def stale_temporaries(root: str | os.PathLike) -> list[Path]:
    """Temporary files (utils.io's '.tmp-' marker) anywhere under `root`."""
    return sorted(p for p in Path(root).rglob(f"*{TMP_MARKER}*") if p.is_file())
