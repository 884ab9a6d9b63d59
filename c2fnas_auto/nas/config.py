"""Network hyper-parameters that do not come from the genotype.

The plans fill these in (channels, classes, per-axis strides for anisotropic data,
which axis is through-plane); the genotype decides the shape. Keeping them apart lets
one searched genotype be deployed on any task.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from c2fnas_auto.errors import C2FNASError


class NetworkConfigError(C2FNASError):
    """A network configuration value is out of range."""


# "c2fnas": the wiring of the public C2FNAS re-implementation (plain cells with 1x1x1 convs in
# and out, second inputs, concat head); "residual": this project's earlier residual cells.
CELL_STYLES: tuple[str, ...] = ("c2fnas", "residual")
# A stored config without "cell_style" predates the field and was trained with residual cells.
LEGACY_CELL_STYLE = "residual"
# The c2fnas head's classifier: "relu" = ReLU -> 1x1x1 conv without bias (the public module);
# "linear" = 1x1x1 conv with bias on the last instance norm's output (chosen by the start study,
# documentation/explanation/search_space.md "Classifier"). The residual head is not affected.
CLASSIFIERS: tuple[str, ...] = ("linear", "relu")
DEFAULT_CLASSIFIER = "linear"
# A stored config without "classifier" predates the field and was trained with the public head.
LEGACY_CLASSIFIER = "relu"


def _triple(v: Any, what: str) -> tuple[int, int, int]:
    try:
        t = tuple(int(x) for x in v)
    except (TypeError, ValueError):
        raise NetworkConfigError(f"{what} must be three integers, got {v!r}") from None
    if len(t) != 3 or any(x < 1 for x in t):
        raise NetworkConfigError(f"{what} must be three positive integers, got {v!r}")
    return t


@dataclass
class NetworkConfig:
    """Widths, strides and heads of a network.

    `strides[0]` is the stem's downsampling (input -> level 1) and `strides[i]` the step
    from level i to level i+1, each per axis (z, y, x) in preprocessed order; a 1 on an
    axis skips downsampling it (anisotropic data). `cell_style` picks the wiring
    (CELL_STYLES, documentation/explanation/search_space.md).
    """

    in_channels: int
    num_classes: int
    stem_channels: int = 32
    level_channels: tuple[int, ...] = (64, 128, 256, 512)
    strides: tuple[tuple[int, int, int], ...] = field(default_factory=lambda: ((2, 2, 2),) * 4)
    through_plane_axis: int = 0
    deep_supervision: bool = False
    cell_style: str = "c2fnas"
    classifier: str = DEFAULT_CLASSIFIER

    def __post_init__(self) -> None:
        for name in ("in_channels", "num_classes", "stem_channels"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise NetworkConfigError(f"{name} must be a positive integer, got {v!r}")
        self.level_channels = tuple(int(c) for c in self.level_channels)
        if not self.level_channels or any(c < 1 for c in self.level_channels):
            raise NetworkConfigError(f"level_channels must be positive integers, got {self.level_channels!r}")
        self.strides = tuple(_triple(s, f"strides[{i}]") for i, s in enumerate(self.strides))
        if len(self.strides) != len(self.level_channels):
            raise NetworkConfigError(f"strides has {len(self.strides)} entries but level_channels has "
                                     f"{len(self.level_channels)}: one stride per level is needed")
        if self.through_plane_axis not in (0, 1, 2):
            raise NetworkConfigError(f"through_plane_axis must be 0, 1 or 2, got {self.through_plane_axis!r}")
        self.deep_supervision = bool(self.deep_supervision)
        if self.cell_style not in CELL_STYLES:
            raise NetworkConfigError(f"cell_style must be one of {', '.join(CELL_STYLES)}, got {self.cell_style!r}")
        if self.classifier not in CLASSIFIERS:
            raise NetworkConfigError(f"classifier must be one of {', '.join(CLASSIFIERS)}, got {self.classifier!r}")

    @property
    def num_levels(self) -> int:
        return len(self.level_channels)

    def level_downsampling(self, level: int) -> tuple[int, int, int]:
        """Per-axis factor between the input and `level` (0 = full resolution)."""
        f = [1, 1, 1]
        for s in self.strides[:level]:
            f = [a * b for a, b in zip(f, s)]
        return tuple(f)  # type: ignore[return-value]

    def total_downsampling(self) -> tuple[int, int, int]:
        """Per-axis factor to the deepest level: patch sizes must be divisible by it."""
        return self.level_downsampling(self.num_levels)

    def check_patch(self, patch_size: Any, deepest_level: int | None = None) -> tuple[int, int, int]:
        """The patch as a tuple, or NetworkConfigError if a level would not divide evenly.

        With `deepest_level` (the genotype's), also reject a patch that leaves a single
        voxel there: instance norm cannot normalise one value.
        """
        p = _triple(patch_size, "patch size")
        d = self.total_downsampling()
        if any(a % b for a, b in zip(p, d)):
            raise NetworkConfigError(f"patch size {list(p)} is not divisible by the total downsampling {list(d)}")
        if deepest_level is not None:
            f = self.level_downsampling(deepest_level)
            if all(a == b for a, b in zip(p, f)):
                raise NetworkConfigError(f"patch size {list(p)} leaves one voxel on level {deepest_level}: "
                                         f"instance norm cannot normalise it, use a larger patch")
        return p

    def to_dict(self) -> dict[str, Any]:
        return {"in_channels": self.in_channels, "num_classes": self.num_classes,
                "stem_channels": self.stem_channels, "level_channels": list(self.level_channels),
                "strides": [list(s) for s in self.strides], "through_plane_axis": self.through_plane_axis,
                "deep_supervision": self.deep_supervision, "cell_style": self.cell_style,
                "classifier": self.classifier}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "NetworkConfig":
        """Inverse of to_dict; a dict without "cell_style" (older plans and checkpoints) gets
        LEGACY_CELL_STYLE and one without "classifier" LEGACY_CLASSIFIER, the network it was
        trained with, so its weights still load."""
        if not isinstance(d, dict):
            raise NetworkConfigError(f"a network config must be a JSON object, got {type(d).__name__}")
        known = {"in_channels", "num_classes", "stem_channels", "level_channels", "strides",
                 "through_plane_axis", "deep_supervision", "cell_style", "classifier"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise NetworkConfigError(f"unknown network config key(s): {', '.join(unknown)}")
        for key in ("in_channels", "num_classes"):
            if key not in d:
                raise NetworkConfigError(f"network config is missing '{key}'")
        kwargs = dict(d)
        kwargs.setdefault("cell_style", LEGACY_CELL_STYLE)
        kwargs.setdefault("classifier", LEGACY_CLASSIFIER)
        if "level_channels" in kwargs:
            kwargs["level_channels"] = tuple(kwargs["level_channels"])
        if "strides" in kwargs:
            kwargs["strides"] = tuple(tuple(s) for s in kwargs["strides"])
        return cls(**kwargs)
