"""--precision / --compile / --channels-last on c2fnas_search: every training and scoring of the
search runs with them, and they are not part of what a resumed search must share."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from c2fnas_auto.cli.search import main
from c2fnas_auto.errors import C2FNASError
from c2fnas_auto.nas.execution import ExecutionOptions
from c2fnas_auto.nas.genotype import Genotype
from c2fnas_auto.paths import search_results_dir
from c2fnas_auto.search.core import search_core
from c2fnas_auto.search.run import SearchRun
from c2fnas_auto.search.settings import EXECUTION_FIELDS, SearchSettings
from c2fnas_auto.search.jobs import WorkerOptions
from c2fnas_auto.search.state import SearchState

from .fakes import Boom, FakeHooks
from .test_end_to_end import TINY, _ctx

OPTIONS = {"precision": "bf16", "compile": True, "channels_last": True}


def _spy(monkeypatch) -> dict:
    """Record the execution keywords of every fit / score_cases and every network prepared;
    compiling is replaced by a recording identity (test_fast_path checks torch.compile itself)."""
    import c2fnas_auto.nas.execution as execution
    import c2fnas_auto.training.api as api

    seen: dict = {"fit": [], "score": [], "prepared": []}
    fit, score, prepare = api.fit, api.score_cases, execution.prepare_network

    def spy_fit(*a, **k):
        seen["fit"].append(k["execution"].to_dict())
        return fit(*a, **k)

    def spy_score(*a, **k):
        seen["score"].append(k["execution"].precision)
        return score(*a, **k)

    def spy_prepare(network, execution=ExecutionOptions(), compiler=None):
        units = []
        prepare(network, execution, compiler=lambda fn: units.append(fn.__self__) or fn)
        seen["prepared"].append((execution.compile, execution.channels_last, units))
        return network

    monkeypatch.setattr(api, "fit", spy_fit)
    monkeypatch.setattr(api, "score_cases", spy_score)
    monkeypatch.setattr(api, "prepare_network", spy_prepare)
    monkeypatch.setattr(execution, "prepare_network", spy_prepare)
    return seen


def test_every_training_and_scoring_of_the_search_runs_with_the_options(copy_task, monkeypatch):
    seen = _spy(monkeypatch)
    assert main(TINY + ["--precision", "bf16", "--compile", "--channels-last"]) == 0
    # 2 candidates at rung 0 + 1 at rung 1, the supernet, 1 stand-alone: 5 trainings at least (restarts add)
    assert len(seen["fit"]) >= 5 and all(k == OPTIONS for k in seen["fit"])
    assert len(seen["score"]) >= 3 + 3 + 1 and set(seen["score"]) == {"bf16"}  # coarse, fine, stand-alone
    assert all(c and cl for c, cl, _ in seen["prepared"])
    from c2fnas_auto.nas.network import C2FNASNet
    from c2fnas_auto.nas.supernet import Supernet

    compiled = [units for _, _, units in seen["prepared"]]
    assert any(len(u) == 1 and isinstance(u[0], C2FNASNet) for u in compiled), "a candidate is compiled whole"
    supernets = [u for u in compiled if len(u) == 12]
    assert supernets and not any(isinstance(m, (C2FNASNet, Supernet)) for m in supernets[0]), \
        "the supernet is compiled cell by cell"

    sdir = search_results_dir(copy_task.task_name)
    state = SearchState.load(sdir / "state.json")
    done = [r for r in state.coarse + state.fine + state.standalone if r.status == "done"]
    assert done and all({k: r.extra.get(k) for k in EXECUTION_FIELDS} == OPTIONS for r in done)
    assert not set(EXECUTION_FIELDS) & set(state.settings), "not among the settings a resume must share"
    report = json.loads((sdir / "report.json").read_text())
    assert report["execution"] == OPTIONS
    assert {k: Genotype.load(sdir / "genotype.json").provenance["settings"][k] for k in EXECUTION_FIELDS} == OPTIONS


def test_a_loaded_supernet_is_prepared_like_a_trained_one(copy_task):
    from c2fnas_auto.search.fine import train_supernet
    from c2fnas_auto.training.splits import fold_case_ids

    train_ids, val_ids = fold_case_ids(copy_task.preprocessed_dir, 0)
    ctx = dataclasses.replace(_ctx(copy_task), train_ids=list(train_ids), val_ids=list(val_ids), iters_per_epoch=1,
                              execution=ExecutionOptions(precision="bf16", channels_last=True))
    ckpt = copy_task.root / "supernet.pth"
    trained, info = train_supernet((1,) * 12, ctx, 1, ckpt, progress=False)
    loaded, again = train_supernet((1,) * 12, ctx, 1, ckpt, progress=False)
    assert not info["loaded"] and again["loaded"]
    for net in (trained, loaded):
        convs = [m.weight for m in net.modules() if isinstance(m, torch.nn.Conv3d)]
        assert convs and all(w.is_contiguous(memory_format=torch.channels_last_3d) for w in convs)
    assert all(torch.equal(a, b) for a, b in zip(trained.state_dict().values(), loaded.state_dict().values()))


SMALL = dict(coarse_candidates=9, min_epochs=1, eta=3, rungs=3, clusters=4, population=4, fine_epochs=1,
             generations=3, iters_per_epoch=2, seed=7, tournament=2, standalone_sample=3,
             noise_repeats=0, standalone_repeats=0)
FAST = WorkerOptions(stale_seconds=0.5, poll_seconds=0.02)


def test_a_state_saved_without_the_options_resumes_under_any_of_them(tmp_path):
    folder = tmp_path / "search"
    crash = FakeHooks(fail_after_coarse=5)
    with pytest.raises(Boom):
        search_core(folder, "T", SearchSettings(**SMALL), crash.hooks(),
                    run=SearchRun(progress=False, workers=FAST))
    old = json.loads((folder / "state.json").read_text())  # as the version before these options wrote it
    old["settings"] = {k: v for k, v in old["settings"].items() if k not in EXECUTION_FIELDS}
    (folder / "state.json").write_text(json.dumps(old))

    again = FakeHooks()
    state = search_core(folder, "T", SearchSettings(**SMALL, execution=ExecutionOptions(**OPTIONS)), again.hooks(),
                        run=SearchRun(resume=True, progress=False, workers=FAST))
    assert state.finished and not set(crash.coarse_calls) & set(again.coarse_calls), "nothing evaluated twice"
    with pytest.raises(C2FNASError, match="changed settings.*seed"):  # a decision still has to match
        search_core(folder, "T", SearchSettings(**{**SMALL, "seed": 8}), FakeHooks().hooks(),
                    run=SearchRun(resume=True, progress=False, workers=FAST))


def test_impossible_options_are_one_line_before_anything_runs(copy_task, capsys, monkeypatch):
    seen = _spy(monkeypatch)
    assert main(TINY + ["--precision", "fp16"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "fp16 needs a CUDA device" in err
    assert seen["fit"] == [] and not (search_results_dir(copy_task.task_name) / "state.json").exists()
    with pytest.raises(C2FNASError, match="--precision 'int8'"):
        SearchSettings(execution=ExecutionOptions(precision="int8")).validate()
