"""The plans file: the single source of truth every later stage reads.

`Plans` is a plain dataclass with a JSON round trip (`save` / `load`) and a
`validate()` that names the broken field, so a hand-edited or stale plans file fails
early with one clear line instead of deep inside training. Spacings, shapes, patch
size and strides are in preprocessed (transposed) numpy order, see
documentation/reference/plans.md.
"""

from __future__ import annotations

import copy
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from c2fnas_auto.errors import C2FNASError, InputError, PlansError
from c2fnas_auto.nas.config import NetworkConfig
from c2fnas_auto.nas.genotype import Genotype
from c2fnas_auto.paths import DEFAULT_PLANS_NAME
from c2fnas_auto.utils.io import atomic_write_json, load_json

SCHEMA_VERSION = 1
NORMALIZATION_SCHEMES = ("CT", "zscore")


def default_resampling(anisotropic: bool = False, threshold: float = 3.0) -> dict[str, Any]:
    """nnU-Net's resampling: images cubic, segmentations one-hot linear; nearest out of plane when anisotropic,
    where interpolating across thick slices would invent structure between them."""
    return {
        "image_order": 3,
        "seg_order": 1,
        "anisotropic": bool(anisotropic),
        "out_of_plane_order": 0,
        "anisotropy_threshold": float(threshold),
    }


@dataclass
class Plans:
    """Everything later stages need to know about a task's configuration."""

    task_name: str
    channel_names: dict[int, str]
    labels: dict[str, int]
    num_classes: int
    target_spacing: list[float]
    transpose_forward: list[int]
    transpose_backward: list[int]
    normalization: list[dict[str, Any]]
    resampling: dict[str, Any]
    network: NetworkConfig
    genotype: Any  # c2fnas_auto.nas.genotype.Genotype
    patch_size: list[int]
    batch_size: int
    gpu_memory_gb: float
    estimated_memory_gb: float
    plans_name: str = DEFAULT_PLANS_NAME
    schema_version: int = SCHEMA_VERSION
    # informative (not needed to run, useful to read and to refit)
    original_median_spacing: list[float] = field(default_factory=list)
    median_shape: list[int] = field(default_factory=list)  # preprocessed space (after resampling + transposition)
    num_training_cases: int = 0
    dataset_voxels: int = 0  # total voxels of all training cases in preprocessed space (batch cap)

    # ----------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("genotype", "network"):
                value = value.to_dict() if hasattr(value, "to_dict") else value
            elif f.name == "channel_names":
                value = {str(k): v for k, v in value.items()}
            out[f.name] = copy.deepcopy(value)
        out["base_channels"] = self.base_channels  # for readers; derived, checked on load
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "plans") -> "Plans":
        if not isinstance(d, dict):
            raise PlansError(f"{source}: expected a JSON object, got {type(d).__name__}")
        version = d.get("schema_version", None)
        if version != SCHEMA_VERSION:
            raise PlansError(f"{source}: schema_version {version!r} is not supported (expected {SCHEMA_VERSION}); "
                             f"rerun c2fnas_plan_and_preprocess")
        known = {f.name for f in fields(cls)}
        required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
        missing = sorted(required - set(d))
        if missing:
            raise PlansError(f"{source}: missing field(s) {', '.join(missing)}")
        kwargs = {k: copy.deepcopy(v) for k, v in d.items() if k in known}
        try:
            kwargs["channel_names"] = {int(k): str(v) for k, v in kwargs["channel_names"].items()}
            kwargs["labels"] = {str(k): int(v) for k, v in kwargs["labels"].items()}
        except (AttributeError, TypeError, ValueError) as exc:
            raise PlansError(f"{source}: channel_names / labels malformed ({exc})") from None
        kwargs["genotype"] = _genotype_from_dict(kwargs["genotype"], source)
        kwargs["network"] = _network_from_dict(kwargs["network"], source)
        stated = d.get("base_channels", kwargs["network"].stem_channels)
        if stated != kwargs["network"].stem_channels:
            raise PlansError(f"{source}: base_channels {stated!r} disagrees with network.stem_channels "
                             f"{kwargs['network'].stem_channels} (base_channels is derived from it: edit the network)")
        return cls(**kwargs)

    def save(self, path: str | Path) -> None:
        self.validate()
        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "Plans":
        try:
            d = load_json(path, "plans file")
        except InputError as exc:
            raise PlansError(str(exc)) from None
        plans = cls.from_dict(d, source=str(path))
        try:
            plans.validate()
        except PlansError as exc:
            raise PlansError(f"{path}: {exc}") from None
        return plans

    def copy(self) -> "Plans":
        return Plans.from_dict(self.to_dict(), source=self.task_name)

    # ----------------------------------------------------------- network
    def network_config(self) -> NetworkConfig:
        """The NetworkConfig in `network`, ready for build_network (kept for older callers)."""
        return self.network

    @property
    def base_channels(self) -> int:
        """The stem width; the level widths follow from it (planner.level_channels_for)."""
        return self.network.stem_channels

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    @property
    def through_plane_axis(self) -> int:
        return self.network.through_plane_axis

    @property
    def strides(self) -> list[list[int]]:
        return [list(s) for s in self.network.strides]

    # --------------------------------------------------------- validation
    def validate(self) -> None:
        """Raise PlansError naming the first inconsistent field.

        A flat list of checks, one per field, in the order the fields appear."""
        _check(isinstance(self.task_name, str) and bool(self.task_name), "task_name must be a non-empty string")
        _check(isinstance(self.channel_names, dict) and len(self.channel_names) > 0,
               "channel_names must name at least one channel")
        _check(sorted(self.channel_names) == list(range(len(self.channel_names))),
               f"channel_names keys must be 0..C-1, got {sorted(self.channel_names)}")
        values = sorted(self.labels.values()) if isinstance(self.labels, dict) else None
        _check(values is not None and values == list(range(len(values))) and len(values) >= 2,
               f"labels must map names to consecutive integers 0..K-1 with K >= 2, got {self.labels}")
        _check(self.num_classes == len(self.labels),
               f"num_classes {self.num_classes} does not match the {len(self.labels)} labels")
        _check(_is_vec(self.target_spacing, float) and all(s > 0 for s in self.target_spacing),
               f"target_spacing must be 3 positive numbers, got {self.target_spacing}")
        _check(sorted(self.transpose_forward) == [0, 1, 2],
               f"transpose_forward must be a permutation of 0,1,2, got {self.transpose_forward}")
        inverse = [list(self.transpose_forward).index(i) for i in range(3)]
        _check(list(self.transpose_backward) == inverse,
               f"transpose_backward {self.transpose_backward} is not the inverse of {self.transpose_forward}")
        _check(isinstance(self.normalization, list) and len(self.normalization) == len(self.channel_names),
               f"normalization needs one entry per channel ({len(self.channel_names)})")
        for i, norm in enumerate(self.normalization):
            scheme = norm.get("scheme") if isinstance(norm, dict) else None
            _check(scheme in NORMALIZATION_SCHEMES,
                   f"normalization[{i}].scheme must be one of {NORMALIZATION_SCHEMES}, got {scheme!r}")
            _check(isinstance(norm.get("use_nonzero_mask"), bool),
                   f"normalization[{i}].use_nonzero_mask must be true or false")
            if scheme == "CT":
                for key in ("mean", "std", "lower", "upper"):
                    _check(isinstance(norm.get(key), (int, float)), f"normalization[{i}].{key} missing for CT")
                _check(norm["std"] > 0, f"normalization[{i}].std must be > 0")
                _check(norm["lower"] <= norm["upper"], f"normalization[{i}].lower > upper")
        for key in ("image_order", "seg_order", "anisotropic", "out_of_plane_order", "anisotropy_threshold"):
            _check(isinstance(self.resampling, dict) and key in self.resampling, f"resampling.{key} missing")
        for key in ("image_order", "seg_order", "out_of_plane_order"):
            _check(self.resampling[key] in range(6), f"resampling.{key} must be a spline order 0..5")
        _check(_is_vec(self.patch_size, int) and all(p > 0 for p in self.patch_size),
               f"patch_size must be 3 positive integers, got {self.patch_size}")
        _check(isinstance(self.batch_size, int) and self.batch_size >= 1,
               f"batch_size must be a positive integer, got {self.batch_size}")
        _check(isinstance(self.gpu_memory_gb, (int, float)) and self.gpu_memory_gb > 0,
               f"gpu_memory_gb must be > 0, got {self.gpu_memory_gb}")
        _check(isinstance(self.network, NetworkConfig), "network must be a NetworkConfig")
        _check(self.network.in_channels == self.num_channels,
               f"network.in_channels {self.network.in_channels} != {self.num_channels} channels")
        _check(self.network.num_classes == self.num_classes,
               f"network.num_classes {self.network.num_classes} != num_classes {self.num_classes}")
        strides = self.strides
        _check(all(v in (1, 2) for s in strides for v in s),
               f"network.strides must be a list of [z, y, x] steps of 1 or 2, got {strides}")
        total = list(self.network.total_downsampling())
        for axis in range(3):
            _check(self.patch_size[axis] % total[axis] == 0,
                   f"patch_size {self.patch_size} is not divisible by the network's total downsampling {total}")
        if hasattr(self.genotype, "validate"):
            try:
                self.genotype.validate()
            except C2FNASError as exc:
                raise PlansError(f"genotype: {exc}") from None
        else:
            raise PlansError("genotype missing or not a Genotype")


def _network_from_dict(d: Any, source: str) -> NetworkConfig:
    if isinstance(d, NetworkConfig):
        return d
    try:
        return NetworkConfig.from_dict(d)
    except C2FNASError as exc:
        raise PlansError(f"{source}: network: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise PlansError(f"{source}: network malformed ({exc})") from None


def _genotype_from_dict(d: Any, source: str):
    if isinstance(d, Genotype):
        return d
    if not isinstance(d, dict):
        raise PlansError(f"{source}: genotype must be an object with levels and ops")
    try:
        return Genotype.from_dict(d, source=f"{source}: genotype")
    except C2FNASError as exc:
        raise PlansError(str(exc)) from None
    except (KeyError, TypeError, ValueError) as exc:
        raise PlansError(f"{source}: genotype malformed ({exc})") from None


def _is_vec(v: Any, kind: type) -> bool:
    if not isinstance(v, (list, tuple)) or len(v) != 3:
        return False
    if kind is int:
        return all(isinstance(x, int) and not isinstance(x, bool) for x in v)
    return all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise PlansError(message)
