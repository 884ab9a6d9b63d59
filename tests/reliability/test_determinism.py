"""Same seed on CPU -> same plans, preprocessed arrays, splits, first batch and search decisions.

Runs that could differ by process-level state (hash randomisation, worker start-up) are
made in separate processes with different PYTHONHASHSEED values: a result that depends
on set or dict-of-set iteration order would show up here and not in an in-process test.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from c2fnas_auto.utils.testing import cli_command, cli_env, file_digest

from .helpers import BROKEN_ID, task_folder


def _tree_digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): file_digest(p) for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_plans_arrays_and_splits_identical_across_runs(raw_root, tmp_path):
    from c2fnas_auto.training.splits import get_splits

    roots = [tmp_path / "run a", tmp_path / "run b"]
    for r in roots:
        shutil.copytree(raw_root / "raw", r / "raw")
    args = ["-t", BROKEN_ID, "-np", 1, "--gpu-memory-gb", 0.25, "--base-channels", 4, "--no-progress"]
    procs = [subprocess.Popen(cli_command("plan_and_preprocess", args), env=cli_env(r, {"PYTHONHASHSEED": str(i)}),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i, r in enumerate(roots, start=1)]
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    name = task_folder(raw_root).name
    pre = [r / "preprocessed" / name for r in roots]
    a, b = (_tree_digests(p) for p in pre)
    assert (pre[0] / "plans.json").read_text() == (pre[1] / "plans.json").read_text()
    assert a == b, {k for k in set(a) | set(b) if a.get(k) != b.get(k)}
    assert any(k.endswith(".npy") for k in a)
    assert get_splits(pre[0]) == get_splits(pre[1])


def test_first_training_batch_identical_for_the_same_seed(tiny_task):
    """Two loader constructions (with a worker process, as training uses) give the same first batch."""
    from c2fnas_auto.preprocessing.storage import list_cases
    from c2fnas_auto.training.dataloader import load_cases, make_batch_iterator

    plans = tiny_task.plans
    ids = list_cases(tiny_task.preprocessed_dir)

    def first(seed: int) -> dict:
        it = make_batch_iterator(load_cases(tiny_task.preprocessed_dir, ids), plans.patch_size, plans.batch_size,
                                 seed=seed, num_workers=1)
        batch = next(it)
        del it
        return batch

    a, b, c = first(0), first(0), first(1)
    assert a["data"].shape[2:] == tuple(plans.patch_size)
    assert a["keys"] == b["keys"]
    assert torch.equal(a["data"], b["data"]) and torch.equal(a["target"], b["target"])
    assert not torch.equal(a["data"], c["data"]), "the seed has no effect"


_SEARCH_SCRIPT = r"""
import json, sys, zlib
from pathlib import Path
from c2fnas_auto.nas.topology import enumerate_topologies, topology_distance, topology_neighbours
from c2fnas_auto.search.core import search_core
from c2fnas_auto.search.run import SearchRun
from c2fnas_auto.search.settings import SearchHooks, SearchSettings, Topologies

def score(levels, ops):  # deterministic pseudo-noise: the same candidate always scores the same
    return (zlib.crc32(repr((list(levels), list(ops))).encode()) % 1000) / 1000.0

def coarse(p):
    return {"score": score(p.levels, p.ops), "params": 1, "flops": 1e9, "training_bytes": 1e6}

hooks = SearchHooks(coarse_evaluate=coarse,
                    train_supernet=lambda levels: ({"levels": list(levels)}, {"epochs": 1, "seconds": 0.0}),
                    fine_evaluator=lambda supernet: coarse)
topo = Topologies([tuple(t) for t in enumerate_topologies(8, 3)],
                  lambda t: [tuple(n) for n in topology_neighbours(t, 3)], topology_distance, 8)
settings = SearchSettings(coarse_candidates=8, clusters=3, population=4, generations=3, fine_epochs=1,
                          min_epochs=1, eta=2, rungs=2, iters_per_epoch=1, tournament=2, standalone_sample=0,
                          seed=int(sys.argv[2]))
state = search_core(Path(sys.argv[1]), "Task000_Fake", settings, hooks, run=SearchRun(progress=False), topologies=topo)
keep = ("stage", "index", "levels", "ops", "status", "score", "cluster", "generation")
out = {"records": [{k: getattr(r, k) for k in keep} for r in state.coarse + state.fine],
       "clusters": state.clusters["labels"], "winner": state.winner}
print(json.dumps(out))
"""


def _search_decisions(runs: list[tuple[Path, int, int]]) -> list[dict]:
    """Run (folder, seed, PYTHONHASHSEED) searches as parallel processes; their decisions."""
    procs = [subprocess.Popen([sys.executable, "-c", _SEARCH_SCRIPT, str(folder), str(seed)],
                              env=cli_env(None, {"PYTHONHASHSEED": str(hash_seed)}), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for folder, seed, hash_seed in runs]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=600)
        assert p.returncode == 0, stderr
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def test_search_decisions_identical_for_the_same_seed(tmp_path):
    a, b, c = _search_decisions([(tmp_path / "a", 3, 1), (tmp_path / "b", 3, 2), (tmp_path / "c", 4, 1)])
    assert len(a["records"]) >= 8 and a["winner"] is not None
    assert a == b
    assert [r["levels"] for r in a["records"]] != [r["levels"] for r in c["records"]], "the seed has no effect"
