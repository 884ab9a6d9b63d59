"""Check a raw dataset before anything is derived from it.

A broken file found after hours of preprocessing or training wastes the run; a broken
file never found silently corrupts it (SimpleITK zero-fills truncated NIfTI). So every
case is read completely once, up front, and the first problem is raised as one
InputError line that names the file and what is wrong with it. Prediction inputs get the
same voxel checks case by case (`read_case_to_predict`).
"""

from __future__ import annotations

import sys
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from c2fnas_auto.data.dataset import Case, Dataset
from c2fnas_auto.data.image_io import (Geometry, check_complete, count_nonfinite, read_image, read_image_info,
                                       read_segmentation, read_volume)
from c2fnas_auto.errors import InputError

GRID_RTOL = 1e-3


@dataclass(frozen=True)
class _Expect:
    """What every case of the dataset must look like (picklable for worker processes)."""

    layout: str
    channel_names: dict[int, str]
    label_values: tuple[int, ...]

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    def describe_channels(self) -> str:
        return ", ".join(f"{c}: {n}" for c, n in self.channel_names.items())


def _describe_4d(exp: _Expect, f: Path, dimension: int, channels: int, shape: tuple[int, ...]) -> None:
    """Dimensionality and channel-count rules for one image file (header facts only)."""
    if dimension not in (3, 4):
        raise InputError(f"{f}: image is {dimension}D with size {shape}, expected a 3D volume")
    if dimension == 4:
        if exp.layout == "nnunet":
            raise InputError(f"{f}: image is 4D {shape}; the nnU-Net layout expects one 3D file per channel")
        if channels != exp.num_channels:
            raise InputError(f"{f}: 4D image has {channels} channels, dataset.json modality declares "
                             f"{exp.num_channels} ({exp.describe_channels()})")
    elif exp.layout == "msd" and exp.num_channels > 1:
        raise InputError(f"{f}: image is 3D (1 channel) but dataset.json modality declares {exp.num_channels} "
                         f"({exp.describe_channels()}); missing modality")


def _check_structure(case: Case, exp: _Expect, needs_label: bool) -> None:
    """Headers only: files present, 3D/4D rules, channel and label grids agree. Fast."""
    for c, f in enumerate(case.image_files):
        if not f.is_file():
            if exp.layout == "nnunet":
                raise InputError(f"{f}: missing channel {c:04d} ({exp.channel_names.get(c, '?')}) "
                                 f"of case {case.case_id}")
            raise InputError(f"{f}: image file not found")
    first = case.image_files[0]
    ref = None
    for f in case.image_files:
        info = read_image_info(f)
        _describe_4d(exp, f, info.dimension, info.num_channels, info.size)
        if ref is None:
            ref = info
        elif info.shape_zyx != ref.shape_zyx:
            raise InputError(f"{f}: channel shape {info.shape_zyx} differs from {first.name} {ref.shape_zyx}")
        elif (problem := ref.geometry.matches(info.geometry, GRID_RTOL)) is not None:
            raise InputError(f"{f}: channel grid differs from {first.name}: {problem}")
    assert ref is not None and ref.geometry is not None
    label = case.label_file
    if label is None:
        if needs_label:
            raise InputError(f"{first}: training case {case.case_id} has no label file")
        return
    if not label.is_file():
        raise InputError(f"{label}: label file not found")
    info = read_image_info(label)
    if info.dimension != 3:
        raise InputError(f"{label}: segmentation is {info.dimension}D with size {info.size}, expected a 3D label map")
    if info.shape_zyx != ref.shape_zyx:
        raise InputError(f"{label}: label shape {info.shape_zyx} differs from image {first.name} shape {ref.shape_zyx}")
    if (problem := ref.geometry.matches(info.geometry, GRID_RTOL)) is not None:
        raise InputError(f"{label}: label grid differs from image {first.name}: {problem}")


def _check_voxels(case: Case, exp: _Expect) -> None:
    """Full read: complete and intact files, finite intensities, declared label values."""
    for f in case.image_files:
        check_complete(f, thorough=True)
        arr, _ = read_volume(f)
        bad = count_nonfinite(f, arr)
        if bad:
            raise InputError(f"{f}: image contains {bad} NaN/inf voxel(s)")
    if case.label_file is not None:
        check_complete(case.label_file, thorough=True)
        seg, _ = read_segmentation(case.label_file)
        undeclared = sorted(set(np.unique(seg).tolist()) - set(exp.label_values))
        if undeclared:
            raise InputError(f"{case.label_file}: label values {undeclared} are not declared in dataset.json labels "
                             f"{list(exp.label_values)}")


def _check_case(job: tuple[str, Case, _Expect, bool]) -> str | None:
    """One stage ('structure' or 'voxels') of one case; the problem as a message, or None.

    Runs in worker processes, hence a plain function returning a string."""
    stage, case, exp, needs_label = job
    try:
        if stage == "structure":
            _check_structure(case, exp, needs_label)
        else:
            _check_voxels(case, exp)
    except InputError as exc:
        return str(exc)
    return None


def _check_listing(dataset: Dataset) -> None:
    """Problems visible without opening any image."""
    where = dataset.dataset_json
    if not dataset.training:
        raise InputError(f"{where}: no training cases found (check 'training' / imagesTr)")
    if dataset.num_training_declared is not None and dataset.num_training_declared != len(dataset.training):
        raise InputError(f"{where}: numTraining is {dataset.num_training_declared} but "
                         f"{len(dataset.training)} training cases were found")
    counts = Counter(c.case_id for c in [*dataset.training, *dataset.test])
    dups = sorted(cid for cid, n in counts.items() if n > 1)
    if dups:
        files = [str(c.image_files[0]) for c in [*dataset.training, *dataset.test] if c.case_id == dups[0]]
        raise InputError(f"{where}: duplicate case id {dups[0]!r} ({' and '.join(files)})")
    for case in [*dataset.training, *dataset.test]:
        if len(case.image_files) != (dataset.num_channels if dataset.layout == "nnunet" else 1):
            raise InputError(f"{case.image_files[0] if case.image_files else where}: case {case.case_id} has "
                             f"{len(case.image_files)} image files")


def _first_problem(jobs: list, num_workers: int, show: bool, desc: str) -> str | None:
    """Check cases in order (in a process pool when asked); stop at the first problem."""
    bar = dict(total=len(jobs), desc=desc, unit="case", disable=not show)
    if num_workers <= 1 or len(jobs) <= 1:
        return next((p for p in tqdm(map(_check_case, jobs), **bar) if p is not None), None)
    pool = ProcessPoolExecutor(max_workers=min(num_workers, len(jobs)))
    try:
        return next((p for p in tqdm(pool.map(_check_case, jobs), **bar) if p is not None), None)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def verify_dataset(dataset: Dataset, num_workers: int = 1, check_test: bool = True,
                   progress: bool | None = None) -> None:
    """Raise InputError (file + problem, one line) on the first problem in `dataset`.

    Checks: an empty or miscounted training list, duplicate case ids, missing files or
    channels, unreadable or truncated images, images that are not 3D (4D only as MSD
    multi-modal with the declared channel count), NaN/inf voxels, image/label grids
    that differ (shape, spacing, origin, direction beyond GRID_RTOL) and label values
    not declared in dataset.json. Test images are checked too (labels when present).
    A header pass over all cases runs before the voxel pass.
    """
    _check_listing(dataset)
    exp = _Expect(layout=dataset.layout, channel_names=dict(dataset.channel_names),
                  label_values=tuple(sorted(dataset.labels.values())))
    cases = [(c, True) for c in dataset.training] + ([(c, False) for c in dataset.test] if check_test else [])
    show = sys.stderr.isatty() if progress is None else progress
    # Headers of every case first (seconds), so a structural problem in the last case is
    # not found only after reading all the voxels before it.
    for stage, desc, workers in (("structure", "verify headers", 1), ("voxels", "verify voxels", num_workers)):
        problem = _first_problem([(stage, c, exp, needs) for c, needs in cases], workers, show, desc)
        if problem is not None:
            raise InputError(problem)


def read_case_to_predict(case: Case, num_channels: int) -> tuple[np.ndarray, Geometry]:
    """Read one prediction input with the checks training inputs get; InputError names the file.

    A problem found while listing the folder (wrong channel files, not 3D/4D) is raised
    here, so the predictor fails this case alone. Non-finite voxels would otherwise turn
    into an empty or wrong segmentation with exit 0 (ITK even reads NIfTI NaN as 0)."""
    if case.problem:
        raise InputError(case.problem)
    data, geometry = read_image(case.image_files)
    if data.shape[0] != num_channels:
        raise InputError(f"{case.image_files[0]}: {data.shape[0]} channel(s), the model expects {num_channels}")
    per_file = [data] if len(case.image_files) == 1 else list(data)
    for f, arr in zip(case.image_files, per_file):
        bad = count_nonfinite(f, arr)
        if bad:
            raise InputError(f"{f}: image contains {bad} NaN/inf voxel(s)")
    return data, geometry
