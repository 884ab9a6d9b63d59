"""The real search on the tiny task: kill mid-way, resume, genotype into plans.json."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from c2fnas_auto.cli.search import main
from c2fnas_auto.nas.genotype import Genotype
from c2fnas_auto.planning.plans import Plans
from c2fnas_auto.search.state import SearchState

TINY = ["-t", "98", "--coarse-candidates", "2", "--clusters", "2", "--population", "2", "--coarse-epochs", "1",
        "--fine-epochs", "1", "--generations", "2", "--iters-per-epoch", "2", "--device", "cpu", "--no-progress",
        "--seed", "3"]


def _count_calls(monkeypatch):
    import c2fnas_auto.training.api as api

    calls = {"fit": 0, "score": 0}
    fit, score = api.fit, api.score_cases

    def counting_fit(*a, **k):
        calls["fit"] += 1
        return fit(*a, **k)

    def counting_score(*a, **k):
        calls["score"] += 1
        return score(*a, **k)

    monkeypatch.setattr(api, "fit", counting_fit)
    monkeypatch.setattr(api, "score_cases", counting_score)
    return calls


def test_search_killed_then_continued(copy_task, monkeypatch, capsys):
    sdir = copy_task.preprocessed_dir / "search"
    state_file = sdir / "state.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "c2fnas_auto.cli.search", *TINY], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if state_file.exists() and any(r.status == "done" for r in SearchState.load(state_file).coarse):
                break
            time.sleep(0.2)
        assert proc.poll() is None, "search ended before it could be killed: " + proc.stderr.read().decode()[-2000:]
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
        proc.stderr.close()
    killed = SearchState.load(state_file)
    done_before = [r for r in killed.coarse if r.status == "done"]
    assert done_before and not killed.finished
    supernet_done = (sdir / "supernet.pth").exists()

    assert main(TINY) == 2, "an existing state needs --continue or --overwrite"
    assert "--continue" in capsys.readouterr().err

    calls = _count_calls(monkeypatch)
    assert main(TINY + ["--continue"]) == 0
    state = SearchState.load(state_file)
    assert state.finished
    trained = [r for r in state.coarse if r.status == "done"]
    assert len(trained) == 2
    assert calls["fit"] == (2 - len(done_before)) + (0 if supernet_done else 1), "finished candidates not retrained"
    for r in done_before:  # the records written before the kill are kept as they were
        assert state.coarse[r.index].score == r.score and state.coarse[r.index].seconds == r.seconds

    # the winner is in the plans, valid, with provenance; patch/batch refitted
    plans_path = copy_task.preprocessed_dir / "plans.json"
    plans = Plans.load(plans_path)
    g = Genotype.load(plans_path)
    assert g.levels == state.winner["levels"] and g.ops == state.winner["ops"]
    assert g.provenance["source_task"] == copy_task.task_name
    assert g.provenance["fine_score"] == state.winner["fine_score"]
    assert g.provenance["settings"]["coarse_candidates"] == 2
    assert plans.genotype.levels == g.levels
    assert max(g.levels) == max(state.coarse[state.winner["coarse_index"]].levels)

    report = json.loads((sdir / "report.json").read_text())
    assert report["winner"]["ops"] == g.ops and report["counts"]["coarse_trained"] == 2
    assert report["counts"]["fine_scored"] == 3  # 2 in generation 0, 1 child in generation 1
    assert report["plans"]["patch_size"] == list(plans.patch_size)
    assert report["compute_seconds"]["coarse"] > 0 and report["compute_seconds"]["supernet"] > 0
    for png in ("search_progress.png", "genotype.png"):
        assert (sdir / png).read_bytes()[:4] == b"\x89PNG"
    assert "winner: levels" in capsys.readouterr().out

    # once more: a finished search replays without training or scoring anything
    calls["fit"] = calls["score"] = 0
    assert main(TINY + ["--continue"]) == 0
    assert calls == {"fit": 0, "score": 0}
    assert SearchState.load(state_file).winner == state.winner


def test_over_memory_candidate_is_not_trained(copy_task, monkeypatch):
    import c2fnas_auto.training.api as api
    from c2fnas_auto.search.coarse import TrainingContext, make_coarse_evaluator
    from c2fnas_auto.search.runner import Proposal

    plans = Plans.load(copy_task.preprocessed_dir / "plans.json")
    plans.gpu_memory_gb = 1e-6
    monkeypatch.setattr(api, "fit", lambda *a, **k: pytest.fail("fit called for an over-budget candidate"))
    ctx = TrainingContext(plans=plans, preprocessed_dir=copy_task.preprocessed_dir, train_ids=["a"], val_ids=["b"],
                          device="cpu", seed=0, iters_per_epoch=1)
    ans = make_coarse_evaluator(ctx, epochs=1)(Proposal(levels=(1,) * 12, ops=("3d",) * 12))
    assert ans["status"] == "skipped" and "budget" in ans["reason"] and ans["training_bytes"] > 0


def test_cli_user_errors_are_one_line(copy_task, capsys):
    assert main(TINY + ["--clusters", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--clusters 0" in err
    with pytest.raises(SystemExit) as exc:
        main(TINY + ["--continue", "--overwrite"])
    assert exc.value.code == 2
    (copy_task.preprocessed_dir / "plans.json").unlink()
    assert main(TINY) == 2
    assert "c2fnas_plan_and_preprocess -t 98" in capsys.readouterr().err
