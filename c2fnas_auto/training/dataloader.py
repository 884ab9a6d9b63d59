"""Random training patches from preprocessed cases, fed through one of two augmentation backends.

A batch is drawn by `PatchSampler` (numpy only, easy to test): each sample picks a case at
random and cuts a region around the network patch (larger when spatial augmentation needs
room), padding with zeros where the case is smaller. The last third of every batch
(nnU-Net's 33 %) is centred on a stored foreground voxel so rare organs are seen often
enough. Two backends turn regions into training batches:

- "batchgenerators": `BatchStream` cuts a fixed initial patch and runs the batchgenerators
  transforms in the worker (the reference implementation).
- "device": `DrawStream` draws the batch's augmentation parameters first, cuts only the
  region they read and ships it (image float32, labels int8) with the parameters;
  `DeviceBatches` moves it to the training device (pinned memory, non-blocking copies on
  CUDA) and runs `device_augmentation.DeviceAugmenter` there.

Either stream is a torch IterableDataset that runs in-process (`num_workers=0`, tests and
the search) or in DataLoader worker processes, each seeded from (seed, rank, worker) so
workers never repeat each other and a run is reproducible for a seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from c2fnas_auto.errors import InputError
from c2fnas_auto.preprocessing.storage import load_case
from c2fnas_auto.training.augmentation import AugmentationParams, build_transforms, initial_patch_size
from c2fnas_auto.training.device_augmentation import BatchDraw, DeviceAugmenter, draw_batch, region_size

FOREGROUND_OVERSAMPLING = 0.33
# how a forced-foreground sample picks its class: "uniform" over the classes the case holds
# (nnU-Net's rule) or "rarest", the class with the fewest stored voxels in the case (the
# stored lists are capped, so classes above the cap tie and are drawn uniformly)
FOREGROUND_CLASS_RULES = ("uniform", "rarest")
AUGMENTATION_BACKENDS = ("batchgenerators", "device")
# on CPU tensors the device backend is also the faster one (benchmarks row 4); CUDA always uses it
CPU_DEFAULT_AUGMENTATION = "device"


def default_augmentation(device: torch.device | str | None) -> str:
    """The backend a run uses unless told otherwise."""
    kind = device.type if isinstance(device, torch.device) else str(device or "cpu").split(":")[0]
    return "device" if kind == "cuda" else CPU_DEFAULT_AUGMENTATION


def check_augmentation(name: str) -> str:
    if name not in AUGMENTATION_BACKENDS:
        raise InputError(f"--augmentation must be one of {', '.join(AUGMENTATION_BACKENDS)} (got {name!r})")
    return name


@dataclass
class CaseData:
    """One preprocessed case: image (C, z, y, x), labels (1, z, y, x) and foreground voxel lists."""

    case_id: str
    data: np.ndarray
    seg: np.ndarray
    class_locations: dict[int, np.ndarray] = field(default_factory=dict)


def load_cases(preprocessed_dir: str | Path, case_ids: Sequence[str], mmap: bool = True) -> list[CaseData]:
    """Open the stored cases (memory-mapped by default so workers share pages)."""
    cases = []
    for cid in case_ids:
        data, seg, props = load_case(Path(preprocessed_dir), cid, mmap=mmap)
        if seg is None:
            seg = np.zeros((1,) + tuple(data.shape[1:]), dtype=np.int8)
        locs = {}
        for k, v in (props.get("class_locations") or {}).items():
            arr = np.asarray(v, dtype=np.int64).reshape(-1, 3)
            if len(arr):
                locs[int(k)] = arr
        cases.append(CaseData(cid, data, seg, locs))
    return cases


def crop_with_padding(array: np.ndarray, lower: Sequence[int], size: Sequence[int], pad_value: float = 0) -> np.ndarray:
    """array[:, lower:lower+size] over the spatial axes, zero-padded wherever it leaves the array."""
    out = np.full((array.shape[0],) + tuple(size), pad_value, dtype=array.dtype)
    src, dst = [slice(None)], [slice(None)]
    for lo, sz, dim in zip(lower, size, array.shape[1:]):
        a, b = max(lo, 0), min(lo + sz, dim)
        if b <= a:
            return out
        src.append(slice(a, b))
        dst.append(slice(a - lo, b - lo))
    out[tuple(dst)] = array[tuple(src)]
    return out


class PatchSampler:
    """Draws batches of (data, seg) patches of `patch_size` from `cases`."""

    def __init__(self, cases: Sequence[CaseData], patch_size: Sequence[int], batch_size: int,
                 oversample_foreground: float = FOREGROUND_OVERSAMPLING, global_batch: int | None = None,
                 offset: int = 0, final_patch_size: Sequence[int] | None = None, foreground_classes: str = "uniform"):
        if not cases:
            raise ValueError("PatchSampler needs at least one case")
        self.cases = list(cases)
        self.patch_size = tuple(int(p) for p in patch_size)
        # the network patch that the augmentation cuts from the centre of `patch_size`
        self.final_patch_size = tuple(int(p) for p in (final_patch_size or patch_size))
        self.batch_size = int(batch_size)
        self.oversample_foreground = oversample_foreground
        # under DDP this sampler draws samples offset..offset+batch_size of the global batch
        self.global_batch = int(global_batch or batch_size)
        self.offset = int(offset)
        if foreground_classes not in FOREGROUND_CLASS_RULES:
            raise ValueError(f"foreground_classes must be one of {FOREGROUND_CLASS_RULES} (got {foreground_classes!r})")
        self.foreground_classes = foreground_classes

    def _pick_class(self, case: CaseData, classes: list[int], rng: np.random.Generator) -> int:
        if self.foreground_classes == "rarest":
            fewest = min(len(case.class_locations[c]) for c in classes)
            classes = [c for c in classes if len(case.class_locations[c]) == fewest]
        return classes[rng.integers(len(classes))]

    def force_foreground(self, index: int) -> bool:
        """Sample `index` must contain foreground: it lies in the last third of the *global* batch."""
        return not self.offset + index < round(self.global_batch * (1 - self.oversample_foreground))

    def _lower_corner(self, case: CaseData, rng: np.random.Generator, force_fg: bool,
                      size: Sequence[int] | None = None) -> list[int]:
        size = size or self.patch_size
        shape = case.data.shape[1:]
        # pad by at least (region - final) so the centred final patch can reach every border
        need = [max(p - f, p - s, 0) for p, f, s in zip(size, self.final_patch_size, shape)]
        lb = [-(n // 2) for n in need]
        ub = [s + n // 2 + n % 2 - p for s, n, p in zip(shape, need, size)]
        classes = [c for c, loc in case.class_locations.items() if c > 0 and len(loc)]
        if force_fg and classes:
            c = self._pick_class(case, classes, rng)
            voxel = case.class_locations[c][rng.integers(len(case.class_locations[c]))]
            return [int(min(max(v - p // 2, lo), hi)) for v, p, lo, hi in zip(voxel, size, lb, ub)]
        return [int(rng.integers(lo, hi + 1)) for lo, hi in zip(lb, ub)]

    def sample(self, rng: np.random.Generator, size: Sequence[int] | None = None) -> dict:
        """One batch of regions of `size` (default `patch_size`); labels keep their stored dtype."""
        size = tuple(int(s) for s in (size or self.patch_size))
        data, seg, keys = [], [], []
        for i in range(self.batch_size):
            case = self.cases[rng.integers(len(self.cases))]
            lower = self._lower_corner(case, rng, self.force_foreground(i), size)
            data.append(crop_with_padding(np.asarray(case.data, dtype=np.float32), lower, size))
            seg.append(crop_with_padding(case.seg, lower, size))
            keys.append(case.case_id)
        return {"data": np.stack(data), "seg": np.stack(seg), "keys": keys}


def stream_seed(seed: int, rank: int = 0, worker: int = 0) -> int:
    """A 32-bit seed unique to (seed, rank, worker)."""
    return int(np.random.SeedSequence([int(seed), int(rank), int(worker)]).generate_state(1)[0])


class BatchStream(torch.utils.data.IterableDataset):
    """Endless augmented batches as torch tensors: data float32 (B, C, ...), target int64 (B, 1, ...)."""

    def __init__(self, sampler: PatchSampler, transforms, seed: int = 0, rank: int = 0):
        super().__init__()
        self.sampler = sampler
        self.transforms = transforms
        self.seed = seed
        self.rank = rank

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        s = stream_seed(self.seed, self.rank, info.id if info is not None else 0)
        rng = np.random.default_rng(s)
        # batchgenerators draws from both global generators (numpy's and, e.g. for the noise
        # variance, Python's `random`): seed both or two runs with one seed differ.
        np.random.seed(s)
        random.seed(s)
        while True:
            batch = self.sampler.sample(rng)
            keys = batch.pop("keys")
            batch["seg"] = batch["seg"].astype(np.float32)
            out = self.transforms(**batch)
            yield {"data": torch.from_numpy(np.ascontiguousarray(out["data"], dtype=np.float32)),
                   "target": torch.from_numpy(np.ascontiguousarray(out["seg"]).astype(np.int64)),
                   "keys": keys}


class DrawStream(torch.utils.data.IterableDataset):
    """Worker side of the device backend: draw the parameters, cut the region they read, ship it.

    Yields data float32 (B, C, *region), target int8 (B, 1, *region) and the draw as tensors
    (None without augmentation, when the region is the network patch itself)."""

    def __init__(self, sampler: PatchSampler, params: AugmentationParams, augment: bool, seed: int = 0,
                 rank: int = 0):
        super().__init__()
        self.sampler, self.params, self.augment = sampler, params, augment
        self.seed, self.rank = seed, rank

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        rng = np.random.default_rng(stream_seed(self.seed, self.rank, info.id if info is not None else 0))
        patch = self.sampler.final_patch_size
        channels = self.sampler.cases[0].data.shape[0]
        while True:
            draw = draw_batch(rng, self.sampler.batch_size, channels, patch, self.params) if self.augment else None
            size = region_size(draw.affine[draw.spatial], patch) if draw is not None else patch
            batch = self.sampler.sample(rng, size)
            yield {"data": torch.from_numpy(batch["data"]),
                   "target": torch.from_numpy(batch["seg"].astype(np.int8, copy=False)),
                   "keys": batch["keys"], "draw": draw.to_tensors() if draw is not None else None}


class DeviceBatches:
    """Main-process side of the device backend: copy each region batch to `device`, augment it there."""

    def __init__(self, source: Iterator[dict], augmenter: DeviceAugmenter, device: torch.device):
        self.source, self.augmenter, self.device = source, augmenter, device
        self.pin = device.type == "cuda"

    def __iter__(self) -> "DeviceBatches":
        return self

    def _move(self, t: torch.Tensor) -> torch.Tensor:
        if self.pin and not t.is_pinned():
            t = t.pin_memory()
        return t.to(self.device, non_blocking=True)

    def __next__(self) -> dict:
        batch = next(self.source)
        data, target = self._move(batch["data"]), self._move(batch["target"])
        if batch["draw"] is None:
            data, target = data.float(), target.long()
        else:
            data, target = self.augmenter(data, target, BatchDraw.from_tensors(batch["draw"]))
        return {"data": data, "target": target, "keys": batch["keys"]}


def make_batch_iterator(cases: Sequence[CaseData], patch_size: Sequence[int], batch_size: int, seed: int = 0,
                        rank: int = 0, num_workers: int = 0, augment: bool = True,
                        params: AugmentationParams | None = None,
                        oversample_foreground: float = FOREGROUND_OVERSAMPLING, global_batch: int | None = None,
                        offset: int = 0, augmentation: str = "batchgenerators",
                        device: torch.device | str | None = None, foreground_classes: str = "uniform"
                        ) -> Iterator[dict]:
    """An endless iterator of augmented batches; workers are DataLoader processes when num_workers > 0.

    `augmentation` picks the backend (module docstring); with "device" the batches come out
    on `device` (default CPU); `foreground_classes` is PatchSampler's rule for the class of
    a forced-foreground sample. Under DDP pass the global batch size and this rank's `offset`
    into it, so foreground oversampling keeps its share of the global batch however it is split."""
    params = params or AugmentationParams()
    patch = tuple(int(p) for p in patch_size)
    check_augmentation(augmentation)
    if augmentation == "device":
        dev = device if isinstance(device, torch.device) else torch.device(device or "cpu")
        sampler = PatchSampler(cases, patch, batch_size, oversample_foreground, global_batch, offset, patch,
                               foreground_classes)
        stream = DrawStream(sampler, params, augment, seed, rank)
        return DeviceBatches(_worker_iterator(stream, num_workers, pin=dev.type == "cuda"), DeviceAugmenter(patch),
                             dev)
    first = initial_patch_size(patch, params) if augment else patch
    sampler = PatchSampler(cases, first, batch_size, oversample_foreground, global_batch, offset, patch,
                           foreground_classes)
    return _worker_iterator(BatchStream(sampler, build_transforms(patch, params, augment), seed, rank), num_workers)


def _worker_iterator(stream: torch.utils.data.IterableDataset, num_workers: int, pin: bool = False) -> Iterator[dict]:
    if num_workers <= 0:
        return iter(stream)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=num_workers, pin_memory=pin,
                                         persistent_workers=True, prefetch_factor=2)
    return iter(loader)
