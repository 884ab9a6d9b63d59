"""A parallel map with a progress bar, shared by fingerprinting and preprocessing.

One worker runs in-process (no start-up cost, easy to debug); more use a spawn
pool, which is safe even after torch or threads were started in the parent.
"""

from __future__ import annotations

import multiprocessing as mp
import sys
from typing import Callable, Iterable, TypeVar

from tqdm import tqdm

T = TypeVar("T")
R = TypeVar("R")


def parallel_map(fn: Callable[[T], R], items: Iterable[T], num_workers: int = 1, desc: str = "",
                 progress: bool | None = None) -> list[R]:
    """`[fn(x) for x in items]` in input order, over `num_workers` processes, with a tqdm bar.

    `progress=None` shows the bar only on a terminal. `fn` must be a module-level function.
    """
    items = list(items)
    show = sys.stderr.isatty() if progress is None else progress
    bar = tqdm(total=len(items), desc=desc, disable=not show, unit="case")
    try:
        if num_workers <= 1 or len(items) <= 1:
            out = []
            for x in items:
                out.append(fn(x))
                bar.update()
            return out
        ctx = mp.get_context("spawn")
        with ctx.Pool(min(num_workers, len(items))) as pool:
            out_unordered: dict[int, R] = {}
            for i, r in pool.imap_unordered(_Indexed(fn), list(enumerate(items))):
                out_unordered[i] = r
                bar.update()
            return [out_unordered[i] for i in range(len(items))]
    finally:
        bar.close()


class _Indexed:
    """Picklable wrapper that keeps the item index next to the result."""

    def __init__(self, fn: Callable) -> None:
        self.fn = fn

    def __call__(self, pair):
        i, x = pair
        return i, self.fn(x)
