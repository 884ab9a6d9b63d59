"""Several workers on one search: two torchrun "nodes" (c10d rendezvous on localhost,
gloo), and independent processes with a killed worker and a late joiner."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from c2fnas_auto.search.optuna_trials import job_trials
from c2fnas_auto.search.state import SearchState
from c2fnas_auto.search.storage import default_url

WORKER = Path(__file__).with_name("dist_worker.py")
SETTINGS = dict(coarse_candidates=8, min_epochs=1, eta=2, rungs=2, clusters=4, population=4, fine_epochs=1,
                generations=2, iters_per_epoch=2, seed=11, tournament=2, standalone_sample=2,
                noise_repeats=0, standalone_repeats=0)  # counts below are of the stages' own jobs
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _workers(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(out.glob("worker-*.json"))]


def _check_exactly_once(out: Path, workers: list[dict]) -> SearchState:
    """Every coarse job and fine candidate has one result and was evaluated by one worker."""
    state = SearchState.load(out / "search" / "state.json")
    assert state.finished
    evaluated = [(json.dumps(k), r) for w in workers for k, r in w["coarse"]]
    assert len(evaluated) == len(set(evaluated)), "no coarse job evaluated twice"
    recorded = [(r.candidate, r.rung) for r in state.coarse]
    assert len(recorded) == len(set(recorded)) == len(evaluated)
    fine = [json.dumps(k) for w in workers for k in w["fine"]]
    assert len(fine) == len(set(fine)) == sum(r.status == "done" for r in state.fine)
    return state


def test_two_torchrun_nodes_share_one_search(tmp_path):
    port = _free_port()
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(k),
                               "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint",
                               f"localhost:{port}", "--rdzv-id", "search-test", str(WORKER), str(tmp_path),
                               json.dumps(SETTINGS), json.dumps({"sleep": 0.05})],
                              env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for k in (0, 1)]
    for proc in nodes:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()[-3000:]
    workers = _workers(tmp_path)
    assert sorted(w["rank"] for w in workers) == [0, 1] and {w["world"] for w in workers} == {2}
    assert all(w["coarse"] for w in workers), "both nodes trained coarse candidates"
    state = _check_exactly_once(tmp_path, workers)
    report = json.loads((tmp_path / "search" / "report.json").read_text())
    assert report["workers"] == 2
    assert len({r.worker for r in state.coarse}) == 2
    assert workers[0]["winner"] == workers[1]["winner"] == state.winner


def _trials(out: Path) -> list[dict]:
    return job_trials(default_url(out / "search"), "T")


def _start(out: Path, settings: str, opts: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(WORKER), str(out), settings, json.dumps(opts)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _finish(*procs: subprocess.Popen) -> None:
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()[-3000:]


def test_killed_worker_loses_only_its_candidate_and_a_late_joiner_helps(tmp_path):
    settings = json.dumps({**SETTINGS, "coarse_candidates": 10})
    # 1 s per job leaves a late joiner's start-up (imports: seconds on a loaded machine) inside the
    # stage; at 0.6 s a loaded run once saw the main worker finish the stage before the helper came
    main = _start(tmp_path, settings, {"sleep": 1.0})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not ((tmp_path / "search" / "state.json").is_file() and
                                               sum(t["state"] == "COMPLETE" for t in _trials(tmp_path)) >= 2):
        time.sleep(0.1)
    # a late joiner that is killed while it trains a candidate
    doomed = _start(tmp_path, settings, {"join": True, "sleep": 30})
    mine: list[dict] = []
    while time.monotonic() < deadline and not mine and doomed.poll() is None:
        mine = [t for t in _trials(tmp_path) if t["state"] == "RUNNING" and f"-{doomed.pid}-" in t["worker"]]
        time.sleep(0.1)
    assert mine, "the joiner took a coarse candidate: " + (doomed.stderr.read().decode()[-2000:]
                                                           if doomed.poll() is not None else "")
    # a second late joiner that works normally, started before the kill so that its start-up overlaps
    helper = _start(tmp_path, settings, {"join": True, "sleep": 0.15})
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(timeout=30)
    lost = mine[0]["job"]
    _finish(main, helper)
    workers = _workers(tmp_path)  # the killed worker wrote nothing
    assert len(workers) == 2 and all(w["coarse"] for w in workers), "the late joiner took coarse candidates"
    _check_exactly_once(tmp_path, workers)
    runs: dict[str, list[str]] = {}
    for t in _trials(tmp_path):
        if t["duplicate_of"] is None:
            runs.setdefault(t["job"], []).append(t["state"])
    assert {j: sorted(s) for j, s in runs.items() if len(s) > 1} == {lost: ["COMPLETE", "FAIL"]}, \
        "only the killed worker's candidate was run again, once"
    assert json.loads((tmp_path / "search" / "report.json").read_text())["workers"] == 2


def test_two_workers_started_at_the_same_instant_share_without_loss_or_duplicates(tmp_path):
    settings = json.dumps(SETTINGS)
    main = _start(tmp_path, settings, {"sleep": 0.2, "hold": True})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (tmp_path / "search" / "state.json").exists():
        time.sleep(0.05)
    go = tmp_path / "go"
    joiners = [_start(tmp_path, settings, {"join": True, "sleep": 0.2, "hold": True}) for _ in range(2)]
    while time.monotonic() < deadline and len(list(tmp_path.glob("waiting-*"))) < 3:
        time.sleep(0.05)
    go.touch()  # all three take their first job at the same instant
    _finish(main, *joiners)
    workers = _workers(tmp_path)
    assert len(workers) == 3 and sum(bool(w["coarse"]) for w in workers) >= 2
    state = _check_exactly_once(tmp_path, workers)
    lost = [t for t in _trials(tmp_path) if t["state"] in ("RUNNING", "WAITING")]
    assert not lost and all(r.status == "done" for r in state.coarse)
