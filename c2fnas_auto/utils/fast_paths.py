"""Switches for the exact rewrites that make the networks and the training step faster.

Each rewrite gives the same values as the plain form to float rounding (tests/nas/test_fast_path.py
and tests/training/test_confusion.py check that); all are on by default. A switch is read once,
when a network module or a training step context is built, and that object keeps the value, so
a test or a benchmark builds its "off" side inside `fast_paths_set(...)` and compares it with the
"on" side: nothing is patched while code runs.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Iterator


@dataclass(frozen=True)
class FastPaths:
    fused_upsample: bool = True  # the wired head's ReLU -> trilinear -> 3x3x3 conv as one conv (nas.ops)
    axis_upsample: bool = True  # trilinear upsampling by factors 1 and 2 axis by axis (nas.ops.Upsample)
    channel_argmax: bool = True  # the step's confusion counts by utils.tensors.channel_argmax, not torch's


_current = FastPaths()


def fast_paths() -> FastPaths:
    """The switches in force now (what a module built now will use)."""
    return _current


@contextmanager
def fast_paths_set(**switches: bool) -> Iterator[FastPaths]:
    """Change some switches for what is built inside the block, e.g.
    `with fast_paths_set(axis_upsample=False): net = build_network(...)`."""
    global _current
    previous = _current
    _current = replace(previous, **switches)
    try:
        yield _current
    finally:
        _current = previous
