"""torchrun with 2 gloo processes: candidates are shared, results identical to one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from c2fnas_auto.search.api import SearchSettings, search_core
from c2fnas_auto.search.state import SearchState

from .fakes import FakeHooks

SETTINGS = dict(coarse_candidates=8, coarse_epochs=1, clusters=4, population=4, fine_epochs=1, generations=2,
                iters_per_epoch=2, seed=11, children_per_round=2, tournament=2)


def test_two_ranks_share_candidates_and_match_one_process(tmp_path):
    worker = Path(__file__).with_name("dist_worker.py")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(worker), str(tmp_path), json.dumps(SETTINGS)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world"] == 2 for r in ranks)
    for stage in ("coarse", "fine"):
        mine = [{tuple(map(tuple, k)) for k in r[stage]} for r in ranks]
        assert mine[0] and mine[1], f"both ranks evaluated {stage} candidates"
        assert not mine[0] & mine[1], "no candidate evaluated twice"
    state = SearchState.load(tmp_path / "search" / "state.json")
    assert {r.rank for r in state.coarse if r.status == "done"} == {0, 1}
    assert ranks[0]["winner"] == ranks[1]["winner"] == state.winner

    single = search_core(tmp_path / "single", "T", SearchSettings(**SETTINGS), FakeHooks().hooks(), progress=False)
    assert [r.key() for r in single.coarse] == [r.key() for r in state.coarse]
    assert [r.key() for r in single.fine] == [r.key() for r in state.fine]
    assert single.winner == state.winner
