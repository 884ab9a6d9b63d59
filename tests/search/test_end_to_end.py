"""The real search on the tiny task: stop by signal, resume, genotype into plans.json and
the results folder; held-out cases never touched; CUDA OOM recorded as skipped."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from c2fnas_auto.cli.search import main
from c2fnas_auto.nas.genotype import Genotype
from c2fnas_auto.paths import search_results_dir
from c2fnas_auto.search.storage import JOURNAL_FILE
from c2fnas_auto.planning.plans import Plans
from c2fnas_auto.search.state import SearchState
from c2fnas_auto.utils.stop_signals import STOPPED_EXIT_CODE

TINY = ["-t", "98", "--coarse-candidates", "2", "--clusters", "2", "--population", "2", "--min-epochs", "1",
        "--eta", "2", "--rungs", "2", "--fine-epochs", "1", "--generations", "2", "--iters-per-epoch", "2",
        "--standalone-sample", "1", "--device", "cpu", "--no-progress", "--seed", "3",
        "--noise-repeats", "0", "--standalone-repeats", "0"]  # the repeats: test_budget_evaluators.py


def _count_calls(monkeypatch, fake: bool = False):
    """Count (and with `fake`, replace) fit / score_cases; records the case ids each got."""
    import c2fnas_auto.training.api as api

    calls = {"fit": 0, "score": 0, "cases": set()}
    fit, score = api.fit, api.score_cases

    def counting_fit(*a, **k):
        calls["fit"] += 1
        calls["cases"] |= set(a[3])
        return [1.0] if fake else fit(*a, **k)

    def counting_score(*a, **k):
        calls["score"] += 1
        calls["cases"] |= set(a[3])
        return {"mean_fg_dice": 0.5} if fake else score(*a, **k)

    monkeypatch.setattr(api, "fit", counting_fit)
    monkeypatch.setattr(api, "score_cases", counting_score)
    return calls


def _completed_trials(journal) -> int:
    """A cheap look (no Optuna storage set-up) while the search runs: it must not finish first.
    Each line of Optuna's journal is one JSON operation; a completed trial is a state of 1."""
    if not journal.is_file():
        return 0
    lines = journal.read_bytes().splitlines()
    return sum(1 for line in lines if b'"state":1' in line and b'"values":[' in line)


def test_search_stopped_by_sigterm_then_continued(copy_task, monkeypatch, capsys):
    sdir = search_results_dir(copy_task.task_name)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "c2fnas_auto.cli.search", *TINY], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if _completed_trials(sdir / JOURNAL_FILE):
                break
            time.sleep(0.1)
        assert proc.poll() is None, "search ended before it could be stopped: " + proc.stderr.read().decode()[-2000:]
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == STOPPED_EXIT_CODE, err.decode()[-2000:]
    assert b"SIGTERM" in out and b"--continue" in out
    stopped = SearchState.load(sdir / "state.json")
    done_before = [r for r in stopped.coarse if r.status == "done"]
    assert done_before and not stopped.finished, "the running candidate was finished and saved"
    supernet_done = (sdir / "supernet.pth").exists()

    assert main(TINY) == 2, "an existing state needs --continue or --overwrite"
    assert "--continue" in capsys.readouterr().err

    calls = _count_calls(monkeypatch)
    assert main(TINY + ["--continue"]) == 0
    state = SearchState.load(sdir / "state.json")
    assert state.finished
    # 2 candidates at rung 0, the better one at rung 1, 1 stand-alone, the supernet
    assert [r.rung for r in state.coarse if r.status == "done"].count(0) == 2
    assert [r.rung for r in state.coarse if r.status == "done"].count(1) == 1
    assert calls["fit"] == (3 - len(done_before)) + (0 if supernet_done else 1) + 1, "finished ones not retrained"
    for r in done_before:  # the records written before the stop are kept as they were
        same = [x for x in state.coarse if (x.candidate, x.rung) == (r.candidate, r.rung)]
        assert len(same) == 1 and same[0].score == r.score and same[0].seconds == r.seconds

    # the winner is in the plans and in the results folder, valid, with provenance
    plans_path = copy_task.preprocessed_dir / "plans.json"
    plans = Plans.load(plans_path)
    g = Genotype.load(plans_path)
    saved = Genotype.load(sdir / "genotype.json")
    assert saved.levels == g.levels == state.winner["levels"] and saved.ops == g.ops == state.winner["ops"]
    assert saved.provenance["source_task"] == copy_task.task_name
    assert saved.provenance["fine_score"] == state.winner["fine_score"]
    assert saved.provenance["settings"]["coarse_candidates"] == 2
    assert saved.provenance["heldout"]["source"] == "imagesTs"
    assert plans.genotype.levels == g.levels
    report = json.loads((sdir / "report.json").read_text())
    assert report["winner"]["ops"] == g.ops and report["counts"]["coarse_trained"] == 3
    assert report["counts"]["fine_scored"] == 3  # 2 in generation 0, 1 child in generation 1
    assert report["heldout"]["source"] == "imagesTs" and len(report["heldout"]["case_ids"]) == 2
    assert report["plans"]["patch_size"] == list(plans.patch_size)
    assert report["compute_seconds"]["coarse"] > 0 and report["compute_seconds"]["supernet"] > 0
    assert report["ranking"]["coarse_rungs"][0]["n"] == 1
    for png in ("search_progress.png", "search_ranking.png", "genotype.png"):
        assert (sdir / png).read_bytes()[:4] == b"\x89PNG"
    assert not (copy_task.preprocessed_dir / "search").exists(), "nothing written under the preprocessed data"
    assert "winner: levels" in capsys.readouterr().out

    # once more: a finished search replays without training or scoring anything
    calls["fit"] = calls["score"] = 0
    assert main(TINY + ["--continue"]) == 0
    assert (calls["fit"], calls["score"]) == (0, 0)

    # a search left at the old location (preprocessed/<task>/search) is moved on --continue
    shutil.move(str(sdir), str(copy_task.preprocessed_dir / "search"))
    assert main(TINY + ["--continue"]) == 0
    assert (sdir / "state.json").is_file() and (sdir / "genotype.json").is_file()
    assert not (copy_task.preprocessed_dir / "search").exists()
    assert "moved the search state" in capsys.readouterr().err


def test_carved_heldout_cases_are_never_touched(copy_task, monkeypatch):
    from c2fnas_auto.search.heldout import all_training_cases, heldout_cases, search_cases

    shutil.rmtree(copy_task.raw_dir / "labelsTs")  # no labelled test cases: carve from the training cases
    calls = _count_calls(monkeypatch, fake=True)
    args = TINY + ["--heldout-fraction", "0.25", "--seed", "1"]
    assert main(args) == 0
    state = SearchState.load(search_results_dir(copy_task.task_name) / "state.json")
    held = state.heldout
    assert held["source"] == "carved" and len(held["case_ids"]) == 2 and held["seed"] == 1
    assert set(held["case_ids"]) <= set(all_training_cases(copy_task.preprocessed_dir))
    assert calls["cases"] and not calls["cases"] & set(held["case_ids"]), "no held-out case trained or scored"
    again = heldout_cases(copy_task.task_name, copy_task.preprocessed_dir, 0.25, 1)
    assert again.case_ids == held["case_ids"], "seeded: the study finds the same cases"
    train, selection = search_cases(copy_task.preprocessed_dir, 0, again)
    assert not (set(train) | set(selection)) & set(again.case_ids)
    report = json.loads((search_results_dir(copy_task.task_name) / "report.json").read_text())
    assert report["heldout"]["case_ids"] == held["case_ids"]
    assert not set(report["selection_cases"]) & set(held["case_ids"])


def test_heldout_refuses_to_leave_nothing_to_search(copy_task):
    from c2fnas_auto.errors import C2FNASError
    from c2fnas_auto.search.heldout import heldout_cases

    shutil.rmtree(copy_task.raw_dir / "labelsTs")
    with pytest.raises(C2FNASError, match="cannot spare"):
        heldout_cases(copy_task.task_name, copy_task.preprocessed_dir, 0.9, 0)
    assert heldout_cases(copy_task.task_name, copy_task.preprocessed_dir, 0.0, 0).source == "none"


def _ctx(copy_task, **plans_changes):
    from c2fnas_auto.search.coarse import TrainingContext

    plans = Plans.load(copy_task.preprocessed_dir / "plans.json")
    for k, v in plans_changes.items():
        setattr(plans, k, v)
    return TrainingContext(plans=plans, preprocessed_dir=copy_task.preprocessed_dir, train_ids=["a"], val_ids=["b"],
                           device="cpu", seed=0, iters_per_epoch=1)


def _oom(*a, **k):
    raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_over_memory_candidate_is_not_trained(copy_task, monkeypatch):
    import c2fnas_auto.training.api as api
    from c2fnas_auto.search.coarse import make_coarse_evaluator
    from c2fnas_auto.search.runner import Proposal

    monkeypatch.setattr(api, "fit", lambda *a, **k: pytest.fail("fit called for an over-budget candidate"))
    ans = make_coarse_evaluator(_ctx(copy_task, gpu_memory_gb=1e-6), epochs=1)(
        Proposal(levels=(1,) * 12, ops=("3d",) * 12))
    assert ans["status"] == "skipped" and "budget" in ans["reason"] and ans["training_bytes"] > 0


def test_cuda_oom_in_either_stage_is_recorded_as_skipped(copy_task, monkeypatch):
    import c2fnas_auto.training.api as api
    from c2fnas_auto.errors import C2FNASError
    from c2fnas_auto.nas.supernet import build_supernet
    from c2fnas_auto.search.coarse import make_coarse_evaluator
    from c2fnas_auto.search.fine import make_fine_evaluator, train_supernet
    from c2fnas_auto.search.runner import Proposal

    ctx = _ctx(copy_task)
    p = Proposal(levels=(1,) * 12, ops=("3d",) * 12, epochs=1)
    monkeypatch.setattr(api, "fit", _oom)
    ans = make_coarse_evaluator(ctx, epochs=1)(p)
    assert ans["status"] == "skipped" and ans["score"] is None
    assert "CUDA out of memory during training" in ans["reason"] and "GiB" in ans["reason"]
    with pytest.raises(C2FNASError, match="CUDA out of memory while training the supernet"):
        train_supernet((1,) * 12, ctx, 1, copy_task.root / "supernet.pth", progress=False)
    monkeypatch.setattr(api, "score_cases", _oom)
    supernet = build_supernet([1] * 12, ctx.plans.network_config())
    ans = make_fine_evaluator(supernet, ctx)(p)
    assert ans["status"] == "skipped" and "CUDA out of memory during shared-weight scoring" in ans["reason"]



def test_supernet_checkpoint_is_reused_only_for_the_same_warmup(copy_task):
    """A finished supernet is loaded on resume; one trained with another warm-up is refused."""
    from c2fnas_auto.errors import C2FNASError
    from c2fnas_auto.search.fine import train_supernet

    import dataclasses

    from c2fnas_auto.training.splits import fold_case_ids

    train_ids, val_ids = fold_case_ids(copy_task.preprocessed_dir, 0)
    ctx = dataclasses.replace(_ctx(copy_task), train_ids=list(train_ids), val_ids=list(val_ids), iters_per_epoch=2)
    ckpt = copy_task.root / "supernet.pth"
    _, info = train_supernet((1,) * 12, ctx, 1, ckpt, progress=False, warmup=0.5)
    assert not info["loaded"] and info["uniform_steps"] == round(0.5 * ctx.iters_per_epoch)
    _, again = train_supernet((1,) * 12, ctx, 1, ckpt, progress=False, warmup=0.5)
    assert again["loaded"]
    with pytest.raises(C2FNASError, match="warm-up 0.5, expected .* / 0.0; use --overwrite"):
        train_supernet((1,) * 12, ctx, 1, ckpt, progress=False, warmup=0.0)

def test_cli_user_errors_are_one_line(copy_task, capsys):
    assert main(TINY + ["--clusters", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--clusters 0" in err
    assert main(TINY + ["--eta", "1"]) == 2 and "--eta 1" in capsys.readouterr().err
    assert main(TINY + ["--join"]) == 2 and "no search to join" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(TINY + ["--continue", "--overwrite"])
    assert exc.value.code == 2
    (copy_task.preprocessed_dir / "plans.json").unlink()
    assert main(TINY) == 2
    assert "c2fnas_plan_and_preprocess -t 98" in capsys.readouterr().err
