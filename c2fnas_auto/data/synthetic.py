"""A seeded synthetic segmentation task that looks enough like abdominal CT (or MR).

Tests and the demo need a task that (a) exercises everything real data does --
anisotropic spacing, flipped and oblique orientations, non-zero origins, several
channels, cases without a lesion -- and (b) can be learned by a tiny network in
minutes of CPU time. Each case is a body ellipse (fat rim, soft tissue, a bright
'spine'), an organ blob of varying position, size and shape (label 1) and, in most
cases, a darker lesion inside it (label 2), with texture and Gaussian noise.
Everything derives from (seed, split, case index), so a seed reproduces every voxel.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from scipy.ndimage import gaussian_filter
from skimage.transform import resize
from tqdm import tqdm

from c2fnas_auto.data.image_io import Geometry, write_image, write_segmentation
from c2fnas_auto.errors import InputError
from c2fnas_auto.utils.io import atomic_write_json, load_json

LABELS = {"background": 0, "organ": 1, "lesion": 2}
_MR_NAMES = ("T2", "ADC", "T1", "FLAIR")

# Mean intensity per tissue: air, fat, soft tissue, organ, lesion, bone.
_CT_MEANS = np.array([-1000.0, -100.0, 40.0, 110.0, 60.0, 600.0])
_MR_MEANS = np.array([0.0, 400.0, 250.0, 450.0, 320.0, 100.0])
_MR_MEANS_ALT = np.array([0.0, 150.0, 250.0, 150.0, 420.0, 80.0])  # ADC-like: organ dark, lesion bright


@dataclass(frozen=True)
class SyntheticSpec:
    """Everything that determines the generated task (stored in dataset.json)."""

    task_id: int
    name: str
    num_train: int
    num_test: int
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    seed: int
    layout: str
    modality: str
    channels: int
    spacing_jitter: float = 0.0  # each case's spacing: spacing * (1 + U(-j, j)) per axis

    def folder_name(self) -> str:
        if self.layout == "msd":
            return f"Task{self.task_id:02d}_{self.name}"
        return f"Dataset{self.task_id:03d}_{self.name}"

    def channel_names(self) -> dict[str, str]:
        if self.modality == "CT":
            return {str(c): "CT" for c in range(self.channels)}
        return {str(c): _MR_NAMES[c] if c < len(_MR_NAMES) else f"MR{c}" for c in range(self.channels)}


def _validate(spec: SyntheticSpec) -> None:
    if spec.layout not in ("msd", "nnunet"):
        raise InputError(f"layout {spec.layout!r}: expected 'msd' or 'nnunet'")
    if spec.modality not in ("CT", "MR"):
        raise InputError(f"modality {spec.modality!r}: expected 'CT' or 'MR'")
    if spec.task_id < 0 or spec.task_id > 999:
        raise InputError(f"task id {spec.task_id}: expected 0..999")
    if not spec.name or not spec.name.replace("-", "").replace("_", "").isalnum():
        raise InputError(f"name {spec.name!r}: use letters, digits, '-' or '_' only")
    if spec.num_train < 1 or spec.num_test < 0:
        raise InputError(f"case counts train={spec.num_train} test={spec.num_test}: need >= 1 training case")
    if len(spec.shape) != 3 or min(spec.shape) < 8:
        raise InputError(f"shape {spec.shape}: need three sizes of at least 8 voxels (z y x)")
    if len(spec.spacing) != 3 or min(spec.spacing) <= 0:
        raise InputError(f"spacing {spec.spacing}: need three positive values (z y x, mm)")
    if spec.channels < 1:
        raise InputError(f"channels {spec.channels}: need at least 1")
    if not 0.0 <= spec.spacing_jitter < 1.0:
        raise InputError(f"spacing jitter {spec.spacing_jitter}: expected 0 <= jitter < 1")


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int, int], coarse: tuple[int, int, int]) -> np.ndarray:
    """Low-frequency random field with unit std (shape variation, bias)."""
    field = resize(rng.normal(size=coarse), shape, order=3, mode="edge", anti_aliasing=False)
    return (field - field.mean()) / (field.std() + 1e-8)


def _case_spacing(rng: np.random.Generator, spec: SyntheticSpec) -> tuple[float, float, float]:
    """The spec's spacing, or with a jitter a per-case draw (no draw without one, so tasks
    made without jitter stay identical to earlier versions)."""
    if not spec.spacing_jitter:
        return spec.spacing
    factors = rng.uniform(1.0 - spec.spacing_jitter, 1.0 + spec.spacing_jitter, size=3)
    return tuple(float(round(s * f, 4)) for s, f in zip(spec.spacing, factors))  # type: ignore[return-value]


def _case_geometry(rng: np.random.Generator, index: int, spacing_zyx: tuple[float, float, float]) -> Geometry:
    """Every third case identity, flipped (like many CTs: diag(-1,-1,1)) or slightly oblique."""
    kind = index % 3
    if kind == 0:
        direction = np.eye(3)
    elif kind == 1:
        direction = np.diag([-1.0, -1.0, 1.0])
    else:
        angle = np.deg2rad(rng.uniform(5.0, 15.0))
        c, s = np.cos(angle), np.sin(angle)
        direction = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    origin = rng.uniform(-200.0, 200.0, size=3).round(3)
    return Geometry(tuple(reversed(spacing_zyx)), tuple(origin), tuple(direction.ravel()))


def _case_arrays(rng: np.random.Generator, spec: SyntheticSpec) -> tuple[np.ndarray, np.ndarray]:
    """(image (C, z, y, x), label (z, y, x)) for one case.

    One function: each structure is drawn from the previous draws of the same generator, so splitting it
    would hand the generator and half-built arrays around."""
    shape = spec.shape
    zz, yy, xx = np.meshgrid(*(np.linspace(-1.0, 1.0, n) for n in shape), indexing="ij")

    # Body: an in-plane ellipse through all slices, with a fat rim and a spine at the back.
    by, bx = rng.uniform(0.75, 0.9), rng.uniform(0.8, 0.95)
    body_r = (yy / by) ** 2 + (xx / bx) ** 2
    body = body_r <= 1.0
    fat = body & (body_r > 0.8)
    spine = ((yy - 0.65 * by) / 0.12) ** 2 + (xx / 0.1) ** 2 <= 1.0

    # Organ: a rotated, perturbed ellipsoid kept away from the rim and spine.
    centre = np.array([rng.uniform(-0.3, 0.3), rng.uniform(-0.3, 0.2), rng.uniform(-0.35, 0.35)])
    radii = np.array([rng.uniform(0.45, 0.65), rng.uniform(0.28, 0.42), rng.uniform(0.28, 0.45)])
    theta = rng.uniform(0.0, np.pi)
    dy, dx = yy - centre[1], xx - centre[2]
    ry, rx = np.cos(theta) * dy + np.sin(theta) * dx, -np.sin(theta) * dy + np.cos(theta) * dx
    level = ((zz - centre[0]) / radii[0]) ** 2 + (ry / radii[1]) ** 2 + (rx / radii[2]) ** 2
    level += 0.25 * _smooth_field(rng, shape, (3, 4, 4))
    organ = (level <= 1.0) & body & ~fat & ~spine

    label = np.zeros(shape, dtype=np.uint8)
    label[organ] = 1
    if rng.random() < 0.7 and organ.sum() > 50:
        # Lesion centred on an organ voxel well inside the organ (lowest level values).
        inner = np.argwhere(organ & (level <= np.quantile(level[organ], 0.3)))
        lz, ly, lx = inner[rng.integers(len(inner))]
        lr = rng.uniform(0.3, 0.5) * radii
        lesion = (((zz - zz[lz, ly, lx]) / lr[0]) ** 2 + ((yy - yy[lz, ly, lx]) / lr[1]) ** 2
                  + ((xx - xx[lz, ly, lx]) / lr[2]) ** 2 <= 1.0) & organ
        label[lesion] = 2

    tissue = np.zeros(shape, dtype=np.int64)  # index into the mean tables
    tissue[body] = 2
    tissue[fat] = 1
    tissue[body & spine] = 5
    tissue[label == 1] = 3
    tissue[label == 2] = 4

    channels = []
    for c in range(spec.channels):
        if spec.modality == "CT":
            means = _CT_MEANS.copy()
            means[3] += 30.0 * c  # later contrast phases enhance the organ more
            means[4] -= 10.0 * c
            noise_std, texture_std = 15.0, 8.0
        else:
            means = (_MR_MEANS if c % 2 == 0 else _MR_MEANS_ALT).copy()
            noise_std, texture_std = 20.0, 15.0
        img = means[tissue]
        texture = gaussian_filter(rng.normal(size=shape), sigma=1.0)
        img += texture_std * texture / (texture.std() + 1e-8) * (label > 0)
        img += rng.normal(0.0, noise_std, size=shape) * (body if spec.modality == "MR" else 1.0)
        if spec.modality == "MR":
            img *= 1.0 + 0.1 * _smooth_field(rng, shape, (2, 3, 3))  # coil bias field
            img = np.clip(img, 0.0, None) * body
        channels.append(img)
    image = np.stack(channels)
    if spec.modality == "CT":
        image = np.clip(np.round(image), -1024, 3071).astype(np.int16)
    else:
        image = image.astype(np.float32)
    return image, label


def _dataset_json(spec: SyntheticSpec, train_ids: list[str], test_ids: list[str]) -> dict:
    provenance = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(spec).items()}
    if not spec.spacing_jitter:  # tasks made before the option existed still match their dataset.json
        del provenance["spacing_jitter"]
    description = "Synthetic CT-like organ + lesion task made by c2fnas_make_synthetic_task"
    if spec.layout == "nnunet":
        return {"name": spec.name, "description": description, "channel_names": spec.channel_names(),
                "labels": dict(LABELS), "numTraining": len(train_ids), "file_ending": ".nii.gz",
                "synthetic": provenance}
    return {"name": spec.name, "description": description, "reference": "c2fnas-auto", "licence": "CC0",
            "release": "1.0", "tensorImageSize": "4D" if spec.channels > 1 else "3D",
            "modality": spec.channel_names(), "labels": {str(v): k for k, v in LABELS.items()},
            "numTraining": len(train_ids), "numTest": len(test_ids),
            "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in train_ids],
            "test": [f"./imagesTs/{c}.nii.gz" for c in test_ids],
            "synthetic": provenance}


def _write_case(folder: Path, split: str, case_id: str, image: np.ndarray, label: np.ndarray,
                geometry: Geometry, layout: str) -> None:
    images, labels = folder / f"images{split}", folder / f"labels{split}"
    if layout == "msd":
        write_image(image if image.shape[0] > 1 else image[0], geometry, images / f"{case_id}.nii.gz")
    else:
        for c, channel in enumerate(image):
            write_image(channel, geometry, images / f"{case_id}_{c:04d}.nii.gz")
    write_segmentation(label, geometry, labels / f"{case_id}.nii.gz")


def make_synthetic_task(raw_root: str | Path, task_id: int = 98, name: str = "Synthetic", num_train: int = 20,
                        num_test: int = 4, shape: tuple[int, int, int] = (32, 64, 64),
                        spacing: tuple[float, float, float] = (3.0, 1.0, 1.0), seed: int = 0,
                        layout: Literal["msd", "nnunet"] = "msd", modality: Literal["CT", "MR"] = "CT",
                        channels: int = 1, overwrite: bool = False, progress: bool | None = None,
                        spacing_jitter: float = 0.0) -> Path:
    """Write a synthetic task into `raw_root` and return its folder.

    Shape and spacing are numpy (z, y, x) order; the default spacing is anisotropic with
    z as the coarse axis. With `spacing_jitter` j > 0 each case gets its own spacing, every
    axis scaled by a factor drawn from [1 - j, 1 + j] (real datasets mix slice thicknesses,
    so preprocessing has to resample). Test cases get reference labels in `labelsTs/`. Rerunning with
    the same arguments returns the existing folder; different arguments on an existing
    folder need `overwrite=True`. The folder appears atomically (built aside, renamed).
    """
    spec = SyntheticSpec(task_id=int(task_id), name=str(name), num_train=int(num_train), num_test=int(num_test),
                         shape=tuple(int(v) for v in shape), spacing=tuple(float(v) for v in spacing),
                         seed=int(seed), layout=str(layout), modality=str(modality), channels=int(channels),
                         spacing_jitter=float(spacing_jitter))
    _validate(spec)
    raw_root = Path(raw_root)
    target = raw_root / spec.folder_name()
    prefix = "syn" if spec.name.lower() == "synthetic" else spec.name.lower()
    train_ids = [f"{prefix}_{i:03d}" for i in range(spec.num_train)]
    test_ids = [f"{prefix}_{spec.num_train + i:03d}" for i in range(spec.num_test)]
    meta = _dataset_json(spec, train_ids, test_ids)
    if target.exists():
        existing = target / "dataset.json"
        if not overwrite and existing.is_file() and load_json(existing).get("synthetic") == meta["synthetic"]:
            return target
        if not overwrite:
            raise InputError(f"{target}: folder exists with other contents; pass overwrite=True (--overwrite) "
                             "or choose another task id")

    raw_root.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=raw_root))
    try:
        show = sys.stderr.isatty() if progress is None else progress
        jobs = [("Tr", i, cid) for i, cid in enumerate(train_ids)] + [("Ts", i, cid) for i, cid in enumerate(test_ids)]
        for split, i, cid in tqdm(jobs, desc=f"synthetic {target.name}", disable=not show, unit="case"):
            rng = np.random.default_rng([spec.seed, 0 if split == "Tr" else 1, i])
            geometry = _case_geometry(rng, i, _case_spacing(rng, spec))
            image, label = _case_arrays(rng, spec)
            _write_case(build, split, cid, image, label, geometry, spec.layout)
        atomic_write_json(build / "dataset.json", meta)
        if target.exists():
            shutil.rmtree(target)
        os.replace(build, target)
    finally:
        if build.exists():
            shutil.rmtree(build, ignore_errors=True)
    return target
