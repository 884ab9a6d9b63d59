"""The search's progress on the terminal."""

from __future__ import annotations

import sys

from tqdm import tqdm

from c2fnas_auto.search.state import CandidateRecord


class Progress:
    """tqdm over candidates plus one printed line per candidate this worker finished."""

    def __init__(self, bars: bool, main: bool, lines: bool = True) -> None:
        self.bars = bars and main
        self.lines = lines
        self.bar = None

    def start(self, total: int, desc: str) -> None:
        if not self.bars:
            return

        self.close()
        self.bar = tqdm(total=total, desc=desc, unit="cand", file=sys.stderr, dynamic_ncols=True)

    def record(self, r: CandidateRecord, replayed: bool) -> None:
        if self.bar is not None and r.status == "done" and self.bar.n < self.bar.total:
            self.bar.update(1)
        if replayed or not self.lines:
            return
        score = "-" if r.score is None else f"{r.score:.4f}"
        gflops = "-" if r.flops is None else f"{r.flops / 1e9:.1f}"
        where = {"coarse": f"cand {r.candidate} rung {r.rung} ({r.epochs} ep) cluster {r.cluster}",
                 "fine": f"gen {r.generation}", "standalone": f"{r.epochs} ep",
                 "coarse_repeat": f"cand {r.candidate} {r.epochs} ep seed {r.seed}",
                 "standalone_repeat": f"{r.epochs} ep seed {r.seed}"}[r.stage]
        tag = r.stage if r.stage == "coarse" else f"{r.stage} #{r.index}"
        line = (f"[{tag} {where}] levels {''.join(map(str, r.levels))} ops {','.join(r.ops)} "
                f"{r.status} score {score} GFLOPs {gflops} {r.seconds:.1f}s {r.reason}").rstrip()
        (self.bar.write(line) if self.bar is not None else print(line, flush=True))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
