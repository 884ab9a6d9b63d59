"""How well several workers share one search (issue 14: torchrun/per-candidate files vs Ray Tune).

Fake evaluators that only sleep (so 2 shared CPU cores do not distort the figures), with
a duration drawn per job from its id (seeded, the same in every configuration):
`unit x epochs x U(0.5, 1.5)` seconds. Scenarios, each a real `search_core` over the shared
trial folder, workers as separate processes (the first is the main worker, the others
`join`):

- 1, 2, 3 and 4 workers started together (the joiners as soon as the main worker has opened
  the search; every worker's first candidate waits until all have announced themselves, so
  python start-up under load does not count): coarse wall time,
  utilisation = busy seconds / (workers x coarse wall), the same counting each worker from its
  own first claim, and, from the same job durations, a *simulated* synchronous
  baseline (rounds of `workers` jobs, each round waits for its slowest, as the old
  generation + all_gather loop did);
- 3 workers, one SIGKILLed mid-candidate: what was rerun;
- 2 workers, a third joining after a delay: its share of the jobs.

    python -m benchmarks.search_workers [--unit 0.3] [--out benchmarks/results/search_workers.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SETTINGS = dict(coarse_candidates=27, min_epochs=1, eta=3, rungs=3, clusters=4, population=6, fine_epochs=0,
                generations=1, iters_per_epoch=1, seed=0, tournament=3, standalone_sample=0)


def job_seconds(levels: Any, epochs: int, unit: float) -> float:
    seed = int(hashlib.sha1(repr(tuple(levels)).encode()).hexdigest()[:8], 16)
    return unit * epochs * random.Random(seed).uniform(0.5, 1.5)


def worker(out: Path, opts: dict[str, Any]) -> None:
    """One search worker with sleeping fake evaluators."""
    from c2fnas_auto.search.api import SearchHooks, SearchSettings, search_core
    from c2fnas_auto.search.trials import WorkerOptions

    unit = float(opts["unit"])
    expect = int(opts.get("expect", 1))
    started = []

    def coarse(p):
        if not started:  # start the clock together: wait until the expected workers have announced themselves
            deadline = time.monotonic() + 300
            while len(list((out / "search" / "trials" / "workers").glob("*.json"))) < expect and \
                    time.monotonic() < deadline:
                time.sleep(0.05)
            started.append(True)
        seconds = job_seconds(p.levels, p.epochs or 1, unit)
        time.sleep(seconds)
        return {"score": random.Random(repr(p.key())).random() + 0.1 * (p.epochs or 1) ** 0.5, "seconds": seconds}

    hooks = SearchHooks(coarse_evaluate=coarse, train_supernet=lambda levels: ({}, {"epochs": 0, "seconds": 0.0}),
                        fine_evaluator=lambda net: (lambda p: {"score": 0.5}))
    search_core(out / "search", "Bench", SearchSettings(**SETTINGS), hooks, progress=False, lines=False,
                join=bool(opts.get("join")), workers=WorkerOptions(stale_seconds=5.0, poll_seconds=0.05))


def _start(out: Path, opts: dict[str, Any]) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "benchmarks.search_workers", "--worker", str(out), json.dumps(opts)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait_for(path: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} did not appear")
        time.sleep(0.05)


def _coarse_stats(out: Path, workers: int) -> dict[str, Any]:
    from c2fnas_auto.search.trials import TrialStore

    store = TrialStore(out / "search" / "trials")
    results = store.results("c")
    claims = {name: c for name, (_, c) in store.claims("c").items()}
    # a job started at finished_at - seconds (seconds = its sleep, start-up waiting excluded)
    first_start: dict[str, float] = {}
    for r in results.values():
        t = r["finished_at"] - r["answer"]["seconds"]
        first_start[r["worker"]] = min(first_start.get(r["worker"], t), t)
    start, end = min(first_start.values()), max(r["finished_at"] for r in results.values())
    busy = sum(r["answer"]["seconds"] for r in results.values())
    per_worker: dict[str, int] = {}
    for r in results.values():
        per_worker[r["worker"]] = per_worker.get(r["worker"], 0) + 1
    # each worker counted from its own first job: process start-up (seconds here) is not idling
    available = sum(end - t for t in first_start.values())
    reruns = sorted(name for name, c in claims.items() if c["attempt"] > 0)
    return {"workers": workers, "jobs": len(results), "coarse_wall_s": round(end - start, 2),
            "busy_s": round(busy, 2), "utilisation": round(busy / (workers * (end - start)), 3),
            "utilisation_from_first_job": round(busy / available, 3),
            "jobs_per_worker": sorted(per_worker.values(), reverse=True), "rerun_jobs": reruns,
            "durations": [r["answer"]["seconds"] for r in sorted(results.values(), key=lambda r: r["finished_at"])]}


def simulated_synchronous(durations: list[float], workers: int) -> float:
    """Wall time if the same jobs ran in rounds of `workers`, each round waiting for its slowest."""
    return sum(max(durations[i:i + workers]) for i in range(0, len(durations), workers))


def scenario_together(root: Path, n: int, unit: float) -> dict[str, Any]:
    out = root / f"together{n}"
    procs = [_start(out, {"unit": unit, "expect": n})]
    _wait_for(out / "search" / "state.json")
    procs += [_start(out, {"unit": unit, "join": True, "expect": n}) for _ in range(n - 1)]
    for p in procs:
        _, err = p.communicate(timeout=900)
        if p.returncode != 0:
            raise RuntimeError(err.decode()[-2000:])
    stats = _coarse_stats(out, n)
    stats["simulated_synchronous_wall_s"] = round(simulated_synchronous(stats.pop("durations"), n), 2)
    return stats


def scenario_killed(root: Path, unit: float) -> dict[str, Any]:
    out = root / "killed"
    main = _start(out, {"unit": unit, "expect": 3})
    _wait_for(out / "search" / "state.json")
    others = [_start(out, {"unit": unit, "join": True, "expect": 3}) for _ in range(2)]
    victim = others[0]
    claims = out / "search" / "trials" / "claims"
    deadline = time.monotonic() + 300
    held: list[str] = []
    while not held and time.monotonic() < deadline:
        time.sleep(0.2)
        held = [p.name for p in claims.glob("c*.json")
                if f"-{victim.pid}-" in json.loads(p.read_text())["worker"]]
    time.sleep(unit / 2)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    t_kill = time.time()
    for p in (main, others[1]):
        _, err = p.communicate(timeout=900)
        if p.returncode != 0:
            raise RuntimeError(err.decode()[-2000:])
    stats = _coarse_stats(out, 3)
    stats.pop("durations")
    stats["killed_worker_claims"] = held
    stats["finished_after_kill_s"] = round(max(json.loads(p.read_text())["finished_at"] for p in
                                               (out / "search" / "trials" / "results").glob("c*.json")) - t_kill, 2)
    return stats


def scenario_late(root: Path, unit: float, delay: float) -> dict[str, Any]:
    out = root / "late"
    main = _start(out, {"unit": unit, "expect": 2})
    _wait_for(out / "search" / "state.json")
    procs = [main, _start(out, {"unit": unit, "join": True, "expect": 2})]
    time.sleep(delay)
    late = _start(out, {"unit": unit, "join": True})
    procs.append(late)
    for p in procs:
        _, err = p.communicate(timeout=900)
        if p.returncode != 0:
            raise RuntimeError(err.decode()[-2000:])
    stats = _coarse_stats(out, 3)
    stats.pop("durations")
    from c2fnas_auto.search.trials import TrialStore

    results = TrialStore(out / "search" / "trials").results("c")
    stats["late_joiner_jobs"] = sum(f"-{late.pid}-" in r["worker"] for r in results.values())
    stats["join_delay_s"] = delay
    return stats


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--unit", type=float, default=0.3, help="seconds per epoch of a fake candidate (x U(0.5, 1.5))")
    ap.add_argument("--out", default="benchmarks/results/search_workers.json")
    ap.add_argument("--worker", nargs=2, metavar=("FOLDER", "OPTS"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(Path(args.worker[0]), json.loads(args.worker[1]))
        return 0
    result: dict[str, Any] = {"settings": SETTINGS, "unit_s": args.unit, "load_before": os.getloadavg(),
                              "scenarios": {}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for n in (1, 2, 3, 4):
            result["scenarios"][f"together_{n}"] = scenario_together(root, n, args.unit)
            print(json.dumps(result["scenarios"][f"together_{n}"]), flush=True)
        result["scenarios"]["killed"] = scenario_killed(root, args.unit)
        print(json.dumps(result["scenarios"]["killed"]), flush=True)
        result["scenarios"]["late_joiner"] = scenario_late(root, args.unit, delay=4.0)
        print(json.dumps(result["scenarios"]["late_joiner"]), flush=True)
    result["load_after"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
