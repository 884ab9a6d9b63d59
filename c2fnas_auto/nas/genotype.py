"""The genotype: what the search finds and what every later stage builds.

A genotype is the macro topology (the resolution level of each cell) plus one
operation per cell. It is stored as JSON on its own or inside a plans file, so the
same object travels from the search to training and prediction unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

from c2fnas_auto.errors import GenotypeError
from c2fnas_auto.utils.io import atomic_write_json, load_json

OPS: tuple[str, ...] = ("2d", "3d", "p3d")
REFERENCE_FILE = "c2fnas_panc_genotype.json"


def check_levels(levels: Sequence[int], num_levels: int = 4, num_cells: int = 12) -> None:
    """Raise GenotypeError naming the first broken topology rule.

    Rules (documentation/explanation/search_space.md): exact length; every level in 1..num_levels; the stem counts as
    level 1 and consecutive cells differ by at most one level; U-shaped (never down
    again after the first up step); the last cell is on level 1.
    """
    levels = list(levels)
    if len(levels) != num_cells:
        raise GenotypeError(f"levels has {len(levels)} entries, expected {num_cells} (one per cell)")
    for i, lv in enumerate(levels):
        if isinstance(lv, bool) or not isinstance(lv, int) or not 1 <= lv <= num_levels:
            raise GenotypeError(f"cell {i + 1} is on level {lv!r}, levels must be integers 1..{num_levels}")
    prev = 1  # the stem's output is level 1
    for i, lv in enumerate(levels):
        if abs(lv - prev) > 1:
            origin = "the stem (level 1)" if i == 0 else f"cell {i} (level {prev})"
            raise GenotypeError(f"cell {i + 1} is on level {lv} after {origin}: a step of more than one level")
        prev = lv
    first_up = None  # index of the first cell that moves up (to a finer level)
    for i in range(1, num_cells):
        if levels[i] < levels[i - 1] and first_up is None:
            first_up = i
        elif levels[i] > levels[i - 1] and first_up is not None:
            raise GenotypeError(
                f"cell {i + 1} goes down to level {levels[i]} after cell {first_up + 1} went up: "
                f"the topology must be U-shaped (down, then up)")
    if levels[-1] != 1:
        raise GenotypeError(f"the last cell is on level {levels[-1]}, it must end on level 1")


def check_ops(ops: Sequence[str], num_cells: int = 12) -> None:
    """Raise GenotypeError for a wrong count or an operation not in OPS."""
    ops = list(ops)
    if len(ops) != num_cells:
        raise GenotypeError(f"ops has {len(ops)} entries, expected {num_cells} (one per cell)")
    for i, op in enumerate(ops):
        if op not in OPS:
            raise GenotypeError(f"cell {i + 1} has unknown op {op!r}, expected one of {', '.join(OPS)}")


@dataclass
class Genotype:
    """Macro topology + one operation per cell; `provenance` says where it came from."""

    levels: list[int]
    ops: list[str]
    num_levels: int = 4
    num_cells: int = 12
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.levels = list(self.levels)
        self.ops = list(self.ops)
        self.provenance = dict(self.provenance or {})

    def validate(self) -> "Genotype":
        """Check every rule; returns self so calls can be chained."""
        if not isinstance(self.num_cells, int) or self.num_cells < 1:
            raise GenotypeError(f"num_cells must be a positive integer, got {self.num_cells!r}")
        if not isinstance(self.num_levels, int) or self.num_levels < 1:
            raise GenotypeError(f"num_levels must be a positive integer, got {self.num_levels!r}")
        check_levels(self.levels, self.num_levels, self.num_cells)
        check_ops(self.ops, self.num_cells)
        return self

    # --- structure helpers used by the network, the cost model and the plot -------------
    @property
    def deepest_index(self) -> int:
        """Index of the first cell on the deepest level: the last encoder cell."""
        return self.levels.index(max(self.levels))

    def is_decoder(self, i: int) -> bool:
        return i > self.deepest_index

    def topology_string(self) -> str:
        return "-".join(str(lv) for lv in self.levels)

    def ops_string(self) -> str:
        return ",".join(self.ops)

    def short_id(self) -> str:
        """8 hex digits naming levels + ops (not provenance): results folders of different
        genotypes never collide, and the same genotype always finds its own folder."""
        key = f"{self.topology_string()}|{self.ops_string()}".encode("utf-8")
        return hashlib.sha1(key).hexdigest()[:8]

    def with_ops(self, ops: Sequence[str]) -> "Genotype":
        return Genotype(list(self.levels), list(ops), self.num_levels, self.num_cells, dict(self.provenance))

    # --- JSON -----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"levels": list(self.levels), "ops": list(self.ops), "num_levels": self.num_levels,
                "num_cells": self.num_cells, "provenance": dict(self.provenance)}

    @classmethod
    def from_dict(cls, d: Any, source: str = "genotype") -> "Genotype":
        """Build and validate; unknown top-level keys are kept as provenance."""
        if not isinstance(d, dict):
            raise GenotypeError(f"{source}: a genotype must be a JSON object, got {type(d).__name__}")
        for key in ("levels", "ops"):
            if key not in d:
                raise GenotypeError(f"{source}: missing key '{key}'")
            if not isinstance(d[key], list):
                raise GenotypeError(f"{source}: '{key}' must be a list")
        known = {"levels", "ops", "num_levels", "num_cells", "provenance"}
        provenance = dict(d.get("provenance") or {})
        provenance.update({k: v for k, v in d.items() if k not in known})
        g = cls(levels=d["levels"], ops=d["ops"], num_levels=d.get("num_levels", 4),
                num_cells=d.get("num_cells", 12),
                provenance=provenance)
        try:
            g.validate()
        except GenotypeError as exc:
            raise GenotypeError(f"{source}: {exc}") from None
        return g

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Genotype":
        """Read a genotype file, or a plans file whose "genotype" key holds one."""
        path = Path(path)
        d = load_json(path, "genotype file")
        if isinstance(d, dict) and "levels" not in d and "genotype" in d:
            if d["genotype"] is None:
                raise GenotypeError(f"{path}: the plans file holds no genotype yet (run the search or set one)")
            d = d["genotype"]
        elif isinstance(d, dict) and "levels" not in d:
            raise GenotypeError(f"{path}: neither a genotype (no 'levels') nor a plans file (no 'genotype')")
        return cls.from_dict(d, source=str(path))

    def save(self, path: str | os.PathLike) -> None:
        self.validate()
        atomic_write_json(path, self.to_dict())


def reference_genotype() -> Genotype:
    """C2FNAS-Panc as publicly re-implemented (package data, see documentation/explanation/search_space.md)."""
    text = resources.files("c2fnas_auto.resources").joinpath(REFERENCE_FILE).read_text(encoding="utf-8")
    return Genotype.from_dict(json.loads(text), source=f"package data {REFERENCE_FILE}")
