"""Run by test_distributed under `torchrun --nproc_per_node 2`: a fake-evaluator search
whose ranks share the candidates; each rank lists what it evaluated itself."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fakes import FakeHooks  # noqa: E402

from c2fnas_auto.search.api import SearchSettings, search_core  # noqa: E402
from c2fnas_auto.search.distributed import init_distributed  # noqa: E402


def main() -> None:
    out = Path(sys.argv[1])
    settings = SearchSettings(**json.loads(sys.argv[2]))
    dist = init_distributed("cpu")
    fake = FakeHooks()
    try:
        state = search_core(out / "search", "T", settings, fake.hooks(), dist=dist, progress=False)
    finally:
        dist.close()
    (out / f"rank{dist.rank}.json").write_text(json.dumps({
        "world": dist.world_size, "coarse": [list(map(list, k)) for k in fake.coarse_calls],
        "fine": [list(map(list, k)) for k in fake.fine_calls], "winner": state.winner}))


if __name__ == "__main__":
    main()
