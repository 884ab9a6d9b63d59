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

from c2fnas_auto.search.state import SearchState

WORKER = Path(__file__).with_name("dist_worker.py")
SETTINGS = dict(coarse_candidates=8, min_epochs=1, eta=2, rungs=2, clusters=4, population=4, fine_epochs=1,
                generations=2, iters_per_epoch=2, seed=11, tournament=2, standalone_sample=2)
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


def test_killed_worker_loses_only_its_candidate_and_a_late_joiner_helps(tmp_path):
    settings = json.dumps({**SETTINGS, "coarse_candidates": 10})
    main = subprocess.Popen([sys.executable, str(WORKER), str(tmp_path), settings, json.dumps({"sleep": 0.6})],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    claims = tmp_path / "search" / "trials" / "claims"
    results = tmp_path / "search" / "trials" / "results"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (results.is_dir() and len(list(results.glob("c*"))) >= 2):
        time.sleep(0.05)
    # a late joiner that is killed while it trains a candidate
    doomed = subprocess.Popen([sys.executable, str(WORKER), str(tmp_path), settings,
                               json.dumps({"join": True, "sleep": 30})], env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    mine: list[Path] = []
    while time.monotonic() < deadline and not mine and doomed.poll() is None:
        mine = [p for p in claims.glob("c*.json") if json.loads(p.read_text())["worker"].split("-")[-2] == str(doomed.pid)]
        time.sleep(0.05)
    assert mine, "the joiner claimed a coarse candidate: " + (doomed.stderr.read().decode()[-2000:] if doomed.poll() is not None else "")
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(timeout=30)
    lost = mine[0].name.split(".")[0]
    # a second late joiner that works normally
    helper = subprocess.Popen([sys.executable, str(WORKER), str(tmp_path), settings,
                               json.dumps({"join": True, "sleep": 0.15})], env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    for proc in (main, helper):
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()[-3000:]
    workers = _workers(tmp_path)  # the killed worker wrote nothing
    assert len(workers) == 2 and all(w["coarse"] for w in workers), "the late joiner took coarse candidates"
    _check_exactly_once(tmp_path, workers)
    retaken = sorted(p.name for p in claims.glob(f"{lost}.a*.json"))
    assert retaken == [f"{lost}.a0.json", f"{lost}.a1.json"], "only the killed worker's candidate was run again"
    assert json.loads((tmp_path / "search" / "report.json").read_text())["workers"] == 2
