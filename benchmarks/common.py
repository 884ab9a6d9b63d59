"""What every benchmark row shares: the result record, profiles, timing, alternation.

A row returns a `RowResult`; its `summary` is what the markdown table shows and its
`details` keep every raw repetition so a reader can check the medians.
"""

from __future__ import annotations

import importlib.util
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

STATUS_OK = "ok"
STATUS_SKIPPED = "skipped"
STATUS_ERROR = "error"


@dataclass
class Summary:
    """One line of the table: our figure, the peer's, ours/peer, the goal and whether it is met."""

    ours: str = ""
    peer: str = ""
    ratio: float | None = None
    goal: str = ""
    met: bool | None = None


@dataclass
class RowResult:
    row: str
    title: str
    status: str = STATUS_OK
    note: str = ""
    summary: Summary = field(default_factory=Summary)
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class RowSkipped(Exception):
    """Raised by a row that cannot run here (peer not installed, no GPU, our module missing)."""


@dataclass(frozen=True)
class Profile:
    """Sizes for one run. `tiny` exists for the smoke test; `quick` fits 15 min on 2 cores."""

    name: str
    reps: int           # alternated pairs for the subprocess rows (1)
    fast_reps: int      # alternated pairs for the in-process rows (2-4): cheap, so more of them
    # row 1: plan + preprocess
    pp_cases: int
    pp_shape: tuple[int, int, int]
    pp_spacing: tuple[float, float, float]
    pp_workers: int
    # row 2: sliding window
    sw_volume: tuple[int, int, int]
    sw_patch: tuple[int, int, int]
    sw_base_channels: int
    # row 3: training step
    ts_patch: tuple[int, int, int]
    ts_batch: int
    ts_base_channels: int
    ts_steps: int
    # row 4: data pipeline
    dp_batches: int
    # row 5: memory estimate
    mem_patches: tuple[tuple[int, int, int], ...]
    mem_base_channels: int
    mem_batch: int
    # row 6/7: search on a small task
    search_cases: int
    search_shape: tuple[int, int, int]
    search_base_channels: int
    search_iters: int
    quality_random: int
    quality_epochs: int
    # row 8: the demo
    demo_args: tuple[str, ...]


PROFILES: dict[str, Profile] = {
    "tiny": Profile(
        name="tiny", reps=2, fast_reps=2,
        pp_cases=6, pp_shape=(16, 32, 32), pp_spacing=(3.0, 1.0, 1.0), pp_workers=1,
        sw_volume=(32, 48, 48), sw_patch=(16, 32, 32), sw_base_channels=4,
        ts_patch=(16, 32, 32), ts_batch=2, ts_base_channels=4, ts_steps=1,
        dp_batches=2,
        mem_patches=((16, 32, 32), (32, 32, 32), (32, 48, 48)), mem_base_channels=4, mem_batch=1,
        search_cases=6, search_shape=(16, 32, 32), search_base_channels=4, search_iters=2,
        quality_random=2, quality_epochs=1,
        demo_args=("--epochs", "1", "--iters-per-epoch", "2", "--skip-search"),
    ),
    "quick": Profile(
        name="quick", reps=3, fast_reps=5,
        pp_cases=20, pp_shape=(64, 96, 96), pp_spacing=(3.0, 0.8, 0.8), pp_workers=2,
        sw_volume=(64, 96, 96), sw_patch=(32, 48, 48), sw_base_channels=8,
        ts_patch=(32, 64, 64), ts_batch=2, ts_base_channels=32, ts_steps=1,
        dp_batches=8,
        mem_patches=((32, 32, 32), (32, 64, 64), (48, 96, 96)), mem_base_channels=16, mem_batch=2,
        search_cases=10, search_shape=(24, 48, 48), search_base_channels=4, search_iters=6,
        quality_random=8, quality_epochs=2,
        demo_args=(),
    ),
    "full": Profile(
        name="full", reps=5, fast_reps=7,
        pp_cases=20, pp_shape=(64, 96, 96), pp_spacing=(3.0, 0.8, 0.8), pp_workers=2,
        sw_volume=(128, 160, 160), sw_patch=(64, 64, 64), sw_base_channels=16,
        ts_patch=(64, 96, 96), ts_batch=2, ts_base_channels=32, ts_steps=1,
        dp_batches=25,
        mem_patches=((32, 64, 64), (64, 96, 96), (64, 128, 128)), mem_base_channels=32, mem_batch=2,
        search_cases=16, search_shape=(32, 64, 64), search_base_channels=8, search_iters=12,
        quality_random=8, quality_epochs=6,
        demo_args=(),
    ),
}


def median(values: list[float]) -> float | None:
    return float(statistics.median(values)) if values else None


def ratio(ours: float | None, peer: float | None) -> float | None:
    if ours is None or peer is None or peer == 0:
        return None
    return float(ours) / float(peer)


def paired_ratio(ours: list[float], peer: list[float]) -> float | None:
    """Median over repetitions of ours_i / peer_i. The two halves of a pair ran back to
    back, so a load spike from another job mostly cancels inside a pair, whereas it
    would shift the median of one side only."""
    rs = [a / b for a, b in zip(ours, peer) if b]
    return median(rs)


def alternate(ours: Callable[[int], float], peer: Callable[[int], float], reps: int) -> tuple[list[float], list[float]]:
    """Call ours and the peer in turn, swapping who goes first every repetition, so that
    slow drifts of a shared machine (another job starting, thermal state, caches) hit
    both sides alike. Each callable gets the repetition index and returns its figure."""
    a, b = [], []
    for i in range(reps):
        if i % 2 == 0:
            a.append(ours(i))
            b.append(peer(i))
        else:
            b.append(peer(i))
            a.append(ours(i))
    return a, b


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def option_skipped(fields: dict[str, Any]) -> str | None:
    """Why an option side (ExecutionOptions fields) is not measured on this CPU; None: measure it.

    bf16 where torch has no fast bf16 convolution on the CPU runs a reference kernel at 14-32x
    fp32's time: a row's bf16 sides then take hours on 2 cores, to say what this reason says."""
    if fields.get("precision") != "bf16":
        return None
    # start-up: importing the package pulls in torch, which the row modules import lazily too
    from c2fnas_auto.nas.execution import cpu_bf16_slow_reason

    slow = cpu_bf16_slow_reason()
    return f"not measured: {slow}" if slow else None


def skipped_sides(sides: dict[str, dict[str, Any]]) -> dict[str, str]:
    """The option sides (name -> ExecutionOptions fields) not measured here, with their reasons."""
    return {name: why for name, fields in sides.items() if (why := option_skipped(fields))}


def have_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def require_module(name: str, why: str) -> None:
    """Skip the row with a clear note when an optional package is missing."""
    if not have_module(name):
        raise RowSkipped(f"{name} not installed ({why}; `pip install -e .[bench]`)")


def require_our(module: str) -> None:
    """Skip the row when a module of ours it needs has not landed (yet)."""
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise RowSkipped(f"our module {module} is not available ({exc})") from None


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "n/a"
    return f"{s:.3f} s" if s < 10 else f"{s:.1f} s"


def fmt_bytes(b: float | None) -> str:
    if b is None:
        return "n/a"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(b) >= size:
            return f"{b / size:.2f} {unit}"
    return f"{b:.0f} B"


def fmt_count(n: float | None) -> str:
    if n is None:
        return "n/a"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:.0f}"


def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]
