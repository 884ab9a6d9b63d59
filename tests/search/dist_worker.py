"""A fake-evaluator search worker for the multi-worker tests: run under torchrun (ranks
share one search) or alone, optionally as a late `--join`er; each process writes what it
evaluated itself to `<out>/worker-<pid>.json`."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fakes import FakeHooks  # noqa: E402

from c2fnas_auto.search.core import search_core  # noqa: E402
from c2fnas_auto.search.run import SearchRun  # noqa: E402
from c2fnas_auto.search.settings import SearchSettings  # noqa: E402
from c2fnas_auto.utils.distributed import init_distributed  # noqa: E402
from c2fnas_auto.search.jobs import WorkerOptions  # noqa: E402


def main() -> None:
    out = Path(sys.argv[1])
    settings = SearchSettings(**json.loads(sys.argv[2]))
    opts = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    join = bool(opts.get("join"))
    dist = init_distributed("cpu") if not join else None
    fake = FakeHooks(sleep=float(opts.get("sleep", 0.0)))
    calls = out / f"worker-{os.getpid()}.json"

    def dump(state=None) -> None:
        calls.write_text(json.dumps({"rank": dist.rank if dist else -1, "world": dist.world_size if dist else 0,
                                     "coarse": [[list(map(list, k)), r] for k, r in fake.coarse_calls],
                                     "fine": [list(map(list, k)) for k in fake.fine_calls],
                                     "winner": state.winner if state else None}))

    if opts.get("hold"):  # the test starts every held worker at one instant (file `go`)
        coarse = fake.coarse

        def hold() -> None:
            (out / f"waiting-{os.getpid()}").touch()
            while not (out / "go").exists():
                time.sleep(0.01)

        def first_waits(p):
            if not fake.coarse_calls:
                hold()
            return coarse(p)

        fake.coarse = first_waits  # the main worker holds in its first candidate (state opened)
        if join:
            hold()  # a joiner holds before it looks at the search
    try:
        run = SearchRun(join=join, dist=dist, storage=opts.get("storage"),
                        workers=WorkerOptions(stale_seconds=2.0, poll_seconds=0.05), progress=False, lines=False)
        state = search_core(out / "search", "T", settings, fake.hooks(), run=run)
    finally:
        if dist is not None:
            dist.close()
    dump(state)


if __name__ == "__main__":
    main()
