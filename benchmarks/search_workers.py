"""How well several workers share one search: the earlier per-candidate files engine vs
Optuna's journal file (the default) vs Optuna on SQLite and on PostgreSQL, side by side in
one run, on the same machine and load.

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

`--repeat R` runs every scenario R times, the engines interleaved within each (load drifts
alike for all). `--real N,..` runs instead one real tiny search per engine (the demo's
synthetic task and search settings, CPU) with N workers. The files engine was removed in
favour of Optuna; it runs from `--files-rev` (a commit that still had it, as `--storage
files`, exported with `git archive` with this benchmark's worker copied in), the Optuna
engines from this tree; PostgreSQL comes from `pgserver` (the `test` extra).

    python -m benchmarks.search_workers [--unit 0.3] [--engines files,journal,sqlite,postgres]
        [--scenarios together_1,..] [--repeat R] [--real 1,2] [--out benchmarks/results/search_workers.json]
"""

from __future__ import annotations

import argparse
import hashlib
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
FILES_REV = "f17816a"  # the last commit with the files engine (`--storage files`: claims by hard link, heartbeat files)
FILES = "files"
SKEW_S = 300.0
WALL = time.time  # the real clock, for the evaluation logs (a skewed worker's time.time is not)
STALE_S = 5.0


def job_seconds(levels: Any, epochs: int, unit: float) -> float:
    seed = int(hashlib.sha1(repr(tuple(levels)).encode()).hexdigest()[:8], 16)
    return unit * epochs * random.Random(seed).uniform(0.5, 1.5)


def _inject_heartbeat_error(after: int, files: bool) -> None:
    """The `after`-th write of this worker's heartbeat thread raises once (either engine)."""
    calls = []

    def beating() -> bool:
        return threading.current_thread().name == "c2fnas-heartbeat"

    if not files:  # Optuna: the beat is a user attribute written by the heartbeat thread
        from optuna.storages import JournalStorage
        from optuna.storages._cached_storage import _CachedStorage  # what an RDBStorage is used through

        for cls in (JournalStorage, _CachedStorage):
            def flaky(self, trial_id, key, value, real=cls.set_trial_user_attr):
                calls.append(trial_id) if beating() else None
                if beating() and len(calls) == after:
                    raise OSError("transient storage error")
                return real(self, trial_id, key, value)

            cls.set_trial_user_attr = flaky
        return
    real_utime = os.utime

    def flaky_utime(path, *a, **k):
        if beating():
            calls.append(path)
            if len(calls) == after:
                raise OSError("transient storage error")
        return real_utime(path, *a, **k)

    os.utime = flaky_utime


def _skew_clock(seconds: float) -> None:
    """This worker's host clock runs `seconds` ahead, where each engine reads a clock: Python's
    wall clock (the file engine's heartbeat ages) and SQLite's CURRENT_TIMESTAMP (Optuna's
    heartbeats on SQLite). A PostgreSQL server keeps its own clock. (libfaketime would do
    both, but here it breaks Python's timed waits: EINVAL or a hang.)"""
    from sqlalchemy.ext.compiler import compiles
    from sqlalchemy.sql import functions

    real = time.time
    time.time = lambda: real() + seconds

    @compiles(functions.now, "sqlite")
    def _now(element, compiler, **kw):
        return f"datetime(CURRENT_TIMESTAMP, '+{int(seconds)} seconds')"


def worker(out: Path, opts: dict[str, Any]) -> None:
    """One search worker with sleeping fake evaluators on `opts["storage"]` (None: SQLite)."""
    from c2fnas_auto.search.core import search_core
    from c2fnas_auto.search.run import SearchRun
    from c2fnas_auto.search.settings import SearchHooks, SearchSettings
    from c2fnas_auto.search.jobs import WorkerOptions

    if opts.get("fault") == "heartbeat_error":
        _inject_heartbeat_error(3, opts.get("storage") == FILES)
    if opts.get("fault") == "clock_skew":
        _skew_clock(SKEW_S)
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
    run = SearchRun(join=bool(opts.get("join")), storage=opts.get("storage"),
                    workers=WorkerOptions(stale_seconds=STALE_S, poll_seconds=0.05), progress=False, lines=False)
    search_core(out / "search", str(opts["name"]), SearchSettings(**SETTINGS), hooks, run=run)


class Engine:
    """How to start a worker of one engine: its code tree and its storage (`--storage`)."""

    def __init__(self, name: str, root: Path, code: Path, storage: str | None) -> None:
        self.name, self.root, self.code, self.storage = name, root, code, storage

    def env(self) -> dict[str, str]:
        return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(self.code))

    def url(self, out: Path) -> str | None:
        """The storage for a run writing to `out` (`{out}` in the engine's storage is replaced)."""
        return self.storage.format(out=out) if self.storage else None

    def start(self, out: Path, opts: dict[str, Any], prefix: list[str] | None = None) -> subprocess.Popen:
        out.mkdir(parents=True, exist_ok=True)
        opts = {**opts, "storage": self.url(out), "name": f"Bench-{out.name}"}
        cmd = [sys.executable, "-c", "import sys, json; from pathlib import Path; "
               "from benchmarks.search_workers import worker; worker(Path(sys.argv[1]), json.loads(sys.argv[2]))",
               str(out), json.dumps(opts)]
        return subprocess.Popen((prefix or []) + cmd, env=self.env(), cwd=str(self.code), stdout=subprocess.DEVNULL,
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


def scenario_killed(engine: Engine, unit: float, name: str) -> dict[str, Any]:
    out = engine.root / engine.name / name
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


def scenario_late(engine: Engine, unit: float, delay: float, name: str) -> dict[str, Any]:
    out = engine.root / engine.name / name
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


SCENARIOS = ("together_1", "together_2", "together_3", "together_4", "killed", "late_joiner", "clock_skew",
             "pid_namespace", "heartbeat_error")


def run_scenario(engine: Engine, key: str, unit: float, rep: int) -> dict[str, Any]:
    name = f"{key.replace('_', '')}-{rep}"
    if key.startswith("together_"):
        return scenario(engine, name, unit, int(key.split("_")[1]))
    if key == "killed":
        return scenario_killed(engine, unit, name)
    if key == "late_joiner":
        return scenario_late(engine, unit, 4.0, name)
    return scenario(engine, name, unit, 2, key)


def _tree(root: Path, rev: str) -> Path:
    """The repository at commit `rev` (the engine it had), with this benchmark's worker."""
    tree = root / f"tree-{rev}"
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


def _cell(runs: Any) -> str:
    """jobs / lost / dup / wall / util of one scenario, each repetition's value in turn."""
    runs = [r for r in (runs if isinstance(runs, list) else [runs]) if r and r.get("jobs")]
    if not runs:
        return "not run"
    join = lambda key: ", ".join(str(r[key]) for r in runs)  # noqa: E731
    problems = "; ".join(r["problem"] for r in runs if r.get("problem"))
    return (f"{join('jobs')} / {join('lost')} / {join('duplicates')} / {join('coarse_wall_s')} / {join('utilisation')}"
            + (f" ({problems})" if problems else ""))


def table(result: dict[str, Any]) -> str:
    """The results as the markdown table of documentation/howto/search.md."""
    engines = list(result["engines"])
    head = "| scenario | " + " | ".join(f"{e}: jobs / lost / dup / wall s / util" for e in engines) + " |"
    lines = [head, "|---|" + "---|" * len(engines)]
    for key, label in ROWS:
        if any(key in result["engines"][e] for e in engines):
            lines.append(f"| {label} | " + " | ".join(_cell(result["engines"][e].get(key)) for e in engines) + " |")
    return "\n".join(lines)


def real_table(result: dict[str, Any]) -> str:
    """The real tiny searches as a markdown table: one row per engine and worker count."""
    lines = ["| engine | workers | wall s (each run) | coarse s | coarse jobs (unique) / fine | winner |",
             "|---|---|---|---|---|---|"]
    for engine, rows in result["engines"].items():
        for _key, runs in rows.items():
            r = runs[0]
            winner = " ".join("".join(str(v)[0] if k == "levels" else {"p3d": "p", "2d": "2", "3d": "3"}.get(v, "?")
                                      for v in (r.get("winner") or {}).get(k) or []) for k in ("levels", "ops"))
            lines.append(f"| {engine} | {r['workers']} | {', '.join(str(x['wall_s']) for x in runs)} | "
                         f"{', '.join(str(x.get('coarse_s')) for x in runs)} | "
                         f"{r.get('coarse_jobs')} ({r.get('coarse_jobs_unique')}) / {r.get('fine_done')} | {winner}"
                         + (f" ({r['problem']})" if r.get("problem") else "") + " |")
    return "\n".join(lines)


REAL_SEARCH = ["--coarse-candidates", "3", "--clusters", "3", "--population", "3", "--min-epochs", "1", "--rungs", "2",
               "--standalone-sample", "0", "--fine-epochs", "1", "--generations", "2", "--iters-per-epoch", "8",
               "--device", "cpu", "--seed", "0", "--no-progress"]  # the demo's search (cli/demo.py)


def _real_task(root: Path) -> tuple[int, Path]:
    """The demo's synthetic task, planned and preprocessed once under `root`."""
    from c2fnas_auto.cli.demo import CELL_STYLE, TASK_ID, TASK_NAME
    from c2fnas_auto.data.synthetic import make_synthetic_task
    from c2fnas_auto.planning.pipeline import plan_and_preprocess

    for var, sub in (("C2FNAS_raw", "raw"), ("C2FNAS_preprocessed", "preprocessed"), ("C2FNAS_results", "results")):
        os.environ[var] = str(root / sub)
    make_synthetic_task(root / "raw", task_id=TASK_ID, name=TASK_NAME, num_train=16, num_test=4, shape=(32, 64, 64),
                        spacing=(3.0, 1.0, 1.0), seed=0, progress=False)
    plan_and_preprocess(TASK_ID, gpu_memory_gb=0.25, base_channels=8, num_workers=2, cell_style=CELL_STYLE,
                        progress=False)
    return TASK_ID, root


def real_search(engine: Engine, task: tuple[int, Path], n: int, rep: int) -> dict[str, Any]:
    """`c2fnas_search` with the demo's settings on `n` workers (the main one, then n - 1 `--join`),
    each with its own copy of the preprocessed task and results folder."""
    from c2fnas_auto.search.state import SearchState

    task_id, task_root = task
    out = engine.root / "real" / f"{engine.name}-{n}-{rep}"
    shutil.copytree(task_root / "preprocessed", out / "preprocessed")
    env = dict(engine.env(), C2FNAS_raw=str(task_root / "raw"), C2FNAS_preprocessed=str(out / "preprocessed"),
               C2FNAS_results=str(out / "results"))
    cmd = [sys.executable, "-m", "c2fnas_auto.cli.search", "-t", str(task_id), *REAL_SEARCH]
    cmd += ["--storage", engine.url(out)] if engine.storage else []
    t0 = time.perf_counter()
    start = lambda extra: subprocess.Popen(cmd + extra, env=env, cwd=str(engine.code),  # noqa: E731
                                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    procs = [start(["--overwrite"])]
    deadline = time.monotonic() + 300
    while n > 1 and not list((out / "results").glob("*/search/state.json")) and time.monotonic() < deadline:
        time.sleep(0.05)
    procs += [start(["--join"]) for _ in range(n - 1)]
    problem = _finish(procs, timeout=900)
    wall = time.perf_counter() - t0
    states = list((out / "results").glob("*/search/state.json"))
    if not states:
        return {"workers": n, "problem": problem or "no state written", "wall_s": round(wall, 1)}
    state = SearchState.load(states[0])
    report_file = states[0].parent / "report.json"
    report = json.loads(report_file.read_text()) if report_file.is_file() else {}
    jobs = [(r.candidate, r.rung) for r in state.coarse]
    return {"workers": n, "problem": problem, "wall_s": round(wall, 1),
            "coarse_s": round(state.stage_seconds.get("coarse", 0.0), 1),
            "coarse_jobs": len(jobs), "coarse_jobs_unique": len(set(jobs)),
            "fine_done": sum(r.status == "done" for r in state.fine), "workers_with_jobs": report.get("workers"),
            "winner": {"levels": (state.winner or {}).get("levels"), "ops": (state.winner or {}).get("ops")}}


def _engines(names: list[str], root: Path, files_rev: str, stack: Any) -> list[Engine]:
    """The engines to compare, each ready to start workers (PostgreSQL started here)."""
    here = Path(__file__).resolve().parents[1]
    out = []
    for name in names:
        if name == "files":
            out.append(Engine(name, root, _tree(root, files_rev), FILES))
        elif name == "journal":  # the default: Optuna's journal file in the search folder
            out.append(Engine(name, root, here, None))
        elif name == "sqlite":
            out.append(Engine(name, root, here, "sqlite:///{out}/search.db"))
        elif name == "postgres":
            import pgserver

            server = pgserver.get_server(root / "pg", cleanup_mode="stop")
            stack.callback(server.cleanup)
            out.append(Engine(name, root, here, server.get_uri()))
        else:
            raise SystemExit(f"--engines: unknown engine {name!r} (files, journal, sqlite, postgres)")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--unit", type=float, default=0.3, help="seconds per epoch of a fake candidate (x U(0.5, 1.5))")
    ap.add_argument("--engines", default="files,journal,sqlite,postgres")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS), help="fake-evaluator scenarios to run")
    ap.add_argument("--repeat", type=int, default=1, help="repetitions, engines interleaved in each")
    ap.add_argument("--real", default="", metavar="N,..",
                    help="instead: one real tiny search (the demo's settings) per engine with N workers each")
    ap.add_argument("--files-rev", default=FILES_REV, help="commit whose `--storage files` engine is measured")
    ap.add_argument("--out", default="benchmarks/results/search_workers.json")
    ap.add_argument("--table", action="store_true", help="print the table of --out and exit")
    args = ap.parse_args(argv)
    if args.table:
        result = json.loads(Path(args.out).read_text())
        print(real_table(result) if result.get("unit_s") is None else table(result))
        return 0
    from contextlib import ExitStack

    from c2fnas_auto.utils.io import atomic_write_json

    keys = [k for k in args.scenarios.split(",") if k]
    unknown = sorted(set(keys) - set(SCENARIOS))
    if unknown:
        raise SystemExit(f"--scenarios: unknown {', '.join(unknown)} (expected some of {', '.join(SCENARIOS)})")
    result: dict[str, Any] = {"settings": SETTINGS, "unit_s": args.unit, "stale_seconds": STALE_S,
                              "files_rev": args.files_rev, "repeat": args.repeat, "cpus": os.cpu_count(),
                              "load_before": os.getloadavg(), "engines": {}}
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        root = Path(tmp)
        engines = _engines(args.engines.split(","), root, args.files_rev, stack)
        if args.real:
            result.update(settings=REAL_SEARCH, unit_s=None, stale_seconds=None)
            task = _real_task(root / "task")
            runs = [(f"real_{n}", lambda e, rep, n=int(n): real_search(e, task, n, rep)) for n in args.real.split(",")]
        else:
            runs = [(k, lambda e, rep, k=k: run_scenario(e, k, args.unit, rep)) for k in keys]
        for rep in range(args.repeat):
            for key, run in runs:
                for engine in engines:  # interleaved: load drift hits every engine alike
                    stats = run(engine, rep)
                    result["engines"].setdefault(engine.name, {}).setdefault(key, []).append(stats)
                    print(engine.name, key, rep, json.dumps(stats), flush=True)
    result["load_after"] = os.getloadavg()
    atomic_write_json(args.out, result)
    print(real_table(result) if args.real else table(result))
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
