"""How well several workers share one search: the file engine (before Optuna) vs Optuna's
embedded SQLite vs Optuna on PostgreSQL, side by side in one run (issue 23).

Fake evaluators that only sleep (so 2 shared CPU cores do not distort the figures), with
a duration drawn per job from its topology (seeded, the same in every configuration):
`unit x epochs x U(0.5, 1.5)` seconds. Every scenario is a real `search_core` over one
shared search, workers as separate processes (the first is the main worker, the others
`join`). Every worker logs each evaluation it starts and finishes (`evals-<pid>.jsonl`),
so the figures are the same for every engine: jobs run, candidates lost (started, never
finished by anyone), duplicates (finished more than once), coarse wall time and
utilisation (busy seconds / each worker's time from its first job to the stage's end).

- `together_N`: N = 1..4 workers started together (the joiners as soon as the main worker
  has opened the search; first candidates wait until all have started);
- `killed`: 3 workers, one SIGKILLed mid-candidate;
- `late_joiner`: 2 workers, a third joining after 4 s;
- `clock_skew`: 2 workers, the joiner's host clock 300 s ahead (`_skew_clock`);
- `pid_namespace`: 2 workers, the joiner in its own PID namespace (`unshare --pid`) on the
  same host name, its PID one that does not exist outside (as in a container);
- `heartbeat_error`: 2 workers, the joiner's third heartbeat write fails once.

The file engine runs from `--files-rev` (the last commit before Optuna), exported with
`git archive`; PostgreSQL comes from `pgserver` (the `test` extra).

    python -m benchmarks.search_workers [--unit 0.3] [--engines files,sqlite,postgres]
        [--out benchmarks/results/search_workers.json]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

SETTINGS = dict(coarse_candidates=27, min_epochs=1, eta=3, rungs=3, clusters=4, population=6, fine_epochs=0,
                generations=1, iters_per_epoch=1, seed=0, tournament=3, standalone_sample=0)
FILES_REV = "e425831"  # the file engine (claims by hard link, heartbeat files)
SKEW_S = 300.0
WALL = time.time  # the real clock, for the evaluation logs (a skewed worker's time.time is not)
STALE_S = 5.0


def job_seconds(levels: Any, epochs: int, unit: float) -> float:
    seed = int(hashlib.sha1(repr(tuple(levels)).encode()).hexdigest()[:8], 16)
    return unit * epochs * random.Random(seed).uniform(0.5, 1.5)


def _inject_heartbeat_error(after: int) -> None:
    """The `after`-th write of this worker's heartbeat thread raises once (either engine)."""
    calls = []

    def beating() -> bool:
        return threading.current_thread().name == "c2fnas-heartbeat"

    if importlib.util.find_spec("c2fnas_auto.search.optuna_trials") is not None:
        import optuna

        real = optuna.storages.RDBStorage.record_heartbeat

        def flaky(self, trial_id):
            calls.append(trial_id) if beating() else None
            if beating() and len(calls) == after:
                raise OSError("transient storage error")
            return real(self, trial_id)

        optuna.storages.RDBStorage.record_heartbeat = flaky
        return
    real_utime = os.utime

    def flaky_utime(path, *a, **k):
        if beating():
            calls.append(path)
            if len(calls) == after:
                raise OSError("transient storage error")
        return real_utime(path, *a, **k)

    os.utime = flaky_utime


def _skew_clock(seconds: float, new: bool) -> None:
    """This worker's host clock runs `seconds` ahead, where each engine reads a clock: Python's
    wall clock (the file engine's heartbeat ages) and SQLite's CURRENT_TIMESTAMP (Optuna's
    heartbeats on SQLite). A PostgreSQL server keeps its own clock. (libfaketime would do
    both, but here it breaks Python's timed waits: EINVAL or a hang.)"""
    real = time.time
    time.time = lambda: real() + seconds
    if new:
        from sqlalchemy.ext.compiler import compiles
        from sqlalchemy.sql import functions

        @compiles(functions.now, "sqlite")
        def _now(element, compiler, **kw):
            return f"datetime(CURRENT_TIMESTAMP, '+{int(seconds)} seconds')"


def worker(out: Path, opts: dict[str, Any]) -> None:
    """One search worker with sleeping fake evaluators, on whichever engine is importable."""
    from c2fnas_auto.search.api import SearchHooks, SearchSettings, search_core

    new = importlib.util.find_spec("c2fnas_auto.search.jobs") is not None
    if new:
        from c2fnas_auto.search.jobs import WorkerOptions
    else:
        from c2fnas_auto.search.trials import WorkerOptions
    if opts.get("fault") == "heartbeat_error":
        _inject_heartbeat_error(3)
    if opts.get("fault") == "clock_skew":
        _skew_clock(SKEW_S, new)
    unit = float(opts["unit"])
    log = out / f"evals-{os.getpid()}.jsonl"
    started = []

    def coarse(p):
        if not started:  # start the clock together: wait until the expected workers have started
            deadline = time.monotonic() + 300
            while len(list(out.glob("alive-*"))) < int(opts.get("expect", 1)) and time.monotonic() < deadline:
                time.sleep(0.05)
            started.append(True)
        job = f"c{p.candidate:05d}-r{p.rung}"
        seconds = job_seconds(p.levels, p.epochs or 1, unit)
        with log.open("a") as f:
            f.write(json.dumps({"job": job, "event": "start", "t": WALL()}) + "\n")
        time.sleep(seconds)
        with log.open("a") as f:
            f.write(json.dumps({"job": job, "event": "end", "t": WALL(), "seconds": seconds}) + "\n")
        return {"score": random.Random(repr(p.key())).random() + 0.1 * (p.epochs or 1) ** 0.5, "seconds": seconds}

    (out / f"alive-{os.getpid()}").touch()
    hooks = SearchHooks(coarse_evaluate=coarse, train_supernet=lambda levels: ({}, {"epochs": 0, "seconds": 0.0}),
                        fine_evaluator=lambda net: (lambda p: {"score": 0.5}))
    kw = {"storage": opts["storage"]} if new and opts.get("storage") else {}
    search_core(out / "search", str(opts["name"]), SearchSettings(**SETTINGS), hooks, progress=False, lines=False,
                join=bool(opts.get("join")), workers=WorkerOptions(stale_seconds=STALE_S, poll_seconds=0.05), **kw)


class Engine:
    """How to start a worker of one engine: its code, its storage, its faults."""

    def __init__(self, name: str, root: Path, files_tree: Path | None, storage: str | None) -> None:
        self.name, self.root, self.files_tree, self.storage = name, root, files_tree, storage

    def start(self, out: Path, opts: dict[str, Any], prefix: list[str] | None = None) -> subprocess.Popen:
        out.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, OMP_NUM_THREADS="1")
        code = self.files_tree if self.name == "files" else Path(__file__).resolve().parents[1]
        env["PYTHONPATH"] = f"{code}{os.pathsep}{Path(__file__).resolve().parents[1]}"
        opts = {**opts, "storage": self.storage, "name": f"Bench-{out.name}"}
        cmd = [sys.executable, "-c", "import sys, json; from pathlib import Path; "
               "from benchmarks.search_workers import worker; worker(Path(sys.argv[1]), json.loads(sys.argv[2]))",
               str(out), json.dumps(opts)]
        return subprocess.Popen((prefix or []) + cmd, env=env, cwd=str(code), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)


def _pid_namespace_prefix() -> list[str]:
    """Run in a new PID namespace as a PID that does not exist on this host (a container's)."""
    target = next(p for p in range(400, 30000) if not Path(f"/proc/{p}").exists())
    # sh is PID 1 inside; each /bin/true takes the next PID, so python gets `target`
    return ["unshare", "--pid", "--fork", "--mount-proc", "sh", "-c",
            f'i=2; while [ $i -lt {target} ]; do /bin/true; i=$((i+1)); done; "$0" "$@"']


def _wait_for(path: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} did not appear")
        time.sleep(0.05)


def _finish(procs: list[subprocess.Popen], timeout: float = 600) -> str:
    """'' when every worker exited 0, else what went wrong (a stalled stage is killed)."""
    deadline = time.monotonic() + timeout
    problems = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
            problems.append(f"stalled for {timeout:.0f} s (killed)")
            continue
        if p.returncode != 0:
            problems.append(f"exit {p.returncode}: {err.decode().strip().splitlines()[-1] if err.strip() else ''}")
    return "; ".join(problems)


def evaluation_stats(out: Path, workers: int) -> dict[str, Any]:
    """Jobs, lost, duplicates, wall and utilisation from the workers' evaluation logs."""
    ends: dict[str, list[dict[str, Any]]] = {}
    starts: set[str] = set()
    per_worker: dict[str, int] = {}
    first: dict[str, float] = {}
    for log in out.glob("evals-*.jsonl"):
        for line in log.read_text().splitlines():
            e = json.loads(line)
            if e["event"] == "start":
                starts.add(e["job"])
                continue
            ends.setdefault(e["job"], []).append(e)
            per_worker[log.stem] = per_worker.get(log.stem, 0) + 1
            first[log.stem] = min(first.get(log.stem, e["t"] - e["seconds"]), e["t"] - e["seconds"])
    if not ends:
        return {"workers": workers, "jobs": 0}
    finished = [e for es in ends.values() for e in es]
    start, end = min(first.values()), max(e["t"] for e in finished)
    busy = sum(e["seconds"] for e in finished)
    available = sum(end - t for t in first.values())
    return {"workers": workers, "jobs": len(ends), "lost": len(starts - set(ends)),
            "duplicates": len(finished) - len(ends), "coarse_wall_s": round(end - start, 2),
            "busy_s": round(busy, 2), "utilisation": round(busy / available, 3),
            "jobs_per_worker": sorted(per_worker.values(), reverse=True)}


def scenario(engine: Engine, name: str, unit: float, n: int, fault: str | None = None) -> dict[str, Any]:
    out = engine.root / engine.name / name
    procs = [engine.start(out, {"unit": unit, "expect": n})]
    _wait_for(out / "search" / "state.json")
    joiners = [{"unit": unit, "join": True, "expect": n} for _ in range(n - 1)]
    if fault:
        joiners[0]["fault"] = fault
    prefix = _pid_namespace_prefix() if fault == "pid_namespace" else None
    procs += [engine.start(out, j, prefix if j.get("fault") else None) for j in joiners]
    stats = {"problem": _finish(procs)}
    stats.update(evaluation_stats(out, n))
    return stats


def scenario_killed(engine: Engine, unit: float) -> dict[str, Any]:
    out = engine.root / engine.name / "killed"
    procs = [engine.start(out, {"unit": unit, "expect": 3})]
    _wait_for(out / "search" / "state.json")
    procs += [engine.start(out, {"unit": unit, "join": True, "expect": 3}) for _ in range(2)]
    victim = procs[1]
    log = out / f"evals-{victim.pid}.jsonl"
    _wait_for(log)
    time.sleep(unit / 2)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    stats = {"problem": _finish([procs[0], procs[2]])}
    stats.update(evaluation_stats(out, 3))
    stats["killed_worker_jobs_started"] = sum('"start"' in line for line in log.read_text().splitlines())
    return stats


def scenario_late(engine: Engine, unit: float, delay: float) -> dict[str, Any]:
    out = engine.root / engine.name / "late"
    procs = [engine.start(out, {"unit": unit, "expect": 2})]
    _wait_for(out / "search" / "state.json")
    procs.append(engine.start(out, {"unit": unit, "join": True, "expect": 2}))
    time.sleep(delay)
    late = engine.start(out, {"unit": unit, "join": True})
    stats = {"problem": _finish(procs + [late])}
    stats.update(evaluation_stats(out, 3))
    log = out / f"evals-{late.pid}.jsonl"
    stats["late_joiner_jobs"] = sum('"end"' in line for line in log.read_text().splitlines()) if log.exists() else 0
    return stats


def run_engine(engine: Engine, unit: float) -> dict[str, Any]:
    res: dict[str, Any] = {}
    for n in (1, 2, 3, 4):
        res[f"together_{n}"] = scenario(engine, f"together{n}", unit, n)
        print(engine.name, f"together_{n}", json.dumps(res[f"together_{n}"]), flush=True)
    res["killed"] = scenario_killed(engine, unit)
    res["late_joiner"] = scenario_late(engine, unit, 4.0)
    for fault in ("clock_skew", "pid_namespace", "heartbeat_error"):
        res[fault] = scenario(engine, fault, unit, 2, fault)
    for k in ("killed", "late_joiner", "clock_skew", "pid_namespace", "heartbeat_error"):
        print(engine.name, k, json.dumps(res[k]), flush=True)
    return res


def _files_tree(root: Path, rev: str) -> Path:
    tree = root / "files-engine"
    tree.mkdir()
    repo = Path(__file__).resolve().parents[1]
    archive = subprocess.run(["git", "-C", str(repo), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    shutil.copy(__file__, tree / "benchmarks" / "search_workers.py")  # this worker, on that engine
    return tree


ROWS = [("together_1", "1 worker"), ("together_2", "2 workers started together"), ("together_3", "3 workers"),
        ("together_4", "4 workers"), ("killed", "3 workers, one SIGKILLed mid-candidate"),
        ("late_joiner", "2 workers + 1 joining 4 s later"), ("clock_skew", "2 workers, one host clock +300 s"),
        ("pid_namespace", "2 workers, one in its own PID namespace, same host name"),
        ("heartbeat_error", "2 workers, one heartbeat write fails once")]


def table(result: dict[str, Any]) -> str:
    """The results as the markdown table of documentation/search.md."""
    engines = list(result["engines"])
    head = "| scenario | " + " | ".join(f"{e}: jobs / lost / dup / wall s / util" for e in engines) + " |"
    lines = [head, "|---|" + "---|" * len(engines)]
    for key, label in ROWS:
        cells = []
        for e in engines:
            r = result["engines"][e].get(key)
            if not r or not r.get("jobs"):
                cells.append("not run")
                continue
            cell = f"{r['jobs']} / {r['lost']} / {r['duplicates']} / {r['coarse_wall_s']} / {r['utilisation']}"
            cells.append(cell + (f" ({r['problem']})" if r.get("problem") else ""))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--unit", type=float, default=0.3, help="seconds per epoch of a fake candidate (x U(0.5, 1.5))")
    ap.add_argument("--engines", default="files,sqlite,postgres")
    ap.add_argument("--files-rev", default=FILES_REV, help="commit with the file engine")
    ap.add_argument("--out", default="benchmarks/results/search_workers.json")
    ap.add_argument("--table", action="store_true", help="print the table of --out and exit")
    args = ap.parse_args(argv)
    if args.table:
        print(table(json.loads(Path(args.out).read_text())))
        return 0
    result: dict[str, Any] = {"settings": SETTINGS, "unit_s": args.unit, "stale_seconds": STALE_S,
                              "files_rev": args.files_rev, "load_before": os.getloadavg(), "engines": {}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name in args.engines.split(","):
            server = None
            storage = None
            if name == "postgres":
                import pgserver

                server = pgserver.get_server(root / "pg", cleanup_mode="stop")
                storage = server.get_uri()
            tree = _files_tree(root, args.files_rev) if name == "files" else None
            try:
                result["engines"][name] = run_engine(Engine(name, root, tree, storage), args.unit)
            finally:
                if server is not None:
                    server.cleanup()
    result["load_after"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
