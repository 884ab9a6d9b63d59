"""The raw tasks of the head-to-head, written once into the workdir in nnU-Net v2's raw layout.

Both tools read the same raw folder. A seeded test set is taken out first and lives outside
the raw task (neither tool can train or select on it); the remaining cases get one 5-fold
split, written into both tools' preprocessed folders so fold 0 is the same for both.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from c2fnas_auto.errors import InputError
from c2fnas_auto.training.splits import make_splits
from c2fnas_auto.utils.io import atomic_write_json, load_json

HIPPOCAMPUS = "hippocampus"
SYNTHETIC = "synthetic"
TASK_IDS = {HIPPOCAMPUS: 604, SYNTHETIC: 605}
SPLIT_SEED = 12345


@dataclass(frozen=True)
class TaskSpec:
    """A prepared task: its raw folder (nnU-Net layout), test images/labels, labels map."""

    key: str
    task_id: int
    raw_dir: Path
    test_images: Path
    test_labels: Path
    labels: dict[str, int]
    train_ids: list[str]
    test_ids: list[str]

    @property
    def name(self) -> str:
        return self.raw_dir.name


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not dst.exists():
        os.symlink(src.resolve(), dst)


def _spec_from(root: Path, key: str) -> TaskSpec:
    meta = load_json(root / "h2h_task.json", "head-to-head task record")
    return TaskSpec(key=key, task_id=int(meta["task_id"]), raw_dir=Path(meta["raw_dir"]),
                    test_images=Path(meta["test_images"]), test_labels=Path(meta["test_labels"]),
                    labels={k: int(v) for k, v in meta["labels"].items()}, train_ids=list(meta["train_ids"]),
                    test_ids=list(meta["test_ids"]))


def _record(root: Path, spec: TaskSpec) -> TaskSpec:
    atomic_write_json(root / "h2h_task.json", {
        "task_id": spec.task_id, "raw_dir": str(spec.raw_dir), "test_images": str(spec.test_images),
        "test_labels": str(spec.test_labels), "labels": spec.labels, "train_ids": spec.train_ids,
        "test_ids": spec.test_ids})
    return spec


def split_test(case_ids: list[str], num_test: int, seed: int) -> tuple[list[str], list[str]]:
    """(train, test): a seeded draw of `num_test` held-out cases; both lists sorted."""
    ids = sorted(case_ids)
    if not 0 < num_test < len(ids):
        raise InputError(f"test set of {num_test} cases impossible from {len(ids)} labelled cases")
    order = np.random.RandomState(seed).permutation(len(ids))
    test = sorted(ids[i] for i in order[:num_test])
    return sorted(set(ids) - set(test)), test


def prepare_hippocampus(source: Path, workdir: Path, num_test: int = 40, seed: int = 0) -> TaskSpec:
    """MSD Task04 (one file per case) -> `Dataset604_H2HHippocampus` with `num_test` cases held out."""
    root = workdir / "tasks" / HIPPOCAMPUS
    if (root / "h2h_task.json").is_file():
        return _spec_from(root, HIPPOCAMPUS)
    src_meta = source / "dataset.json"
    if not src_meta.is_file():
        raise InputError(f"{src_meta}: missing (expected MSD Task04_Hippocampus)")
    meta = load_json(src_meta, "MSD dataset.json")
    cases = sorted(Path(e["image"]).name.removesuffix(".nii.gz") for e in meta["training"])
    train, test = split_test(cases, num_test, seed)
    raw = workdir / "raw" / f"Dataset{TASK_IDS[HIPPOCAMPUS]:03d}_H2HHippocampus"
    for c in train:
        _link(source / "imagesTr" / f"{c}.nii.gz", raw / "imagesTr" / f"{c}_0000.nii.gz")
        _link(source / "labelsTr" / f"{c}.nii.gz", raw / "labelsTr" / f"{c}.nii.gz")
    for c in test:
        _link(source / "imagesTr" / f"{c}.nii.gz", root / "test_images" / f"{c}_0000.nii.gz")
        _link(source / "labelsTr" / f"{c}.nii.gz", root / "test_labels" / f"{c}.nii.gz")
    labels = {name.lower(): int(v) for v, name in meta["labels"].items()}
    atomic_write_json(raw / "dataset.json", {"name": "H2HHippocampus", "channel_names": {"0": "MRI"},
                                             "labels": labels, "numTraining": len(train), "file_ending": ".nii.gz"})
    return _record(root, TaskSpec(HIPPOCAMPUS, TASK_IDS[HIPPOCAMPUS], raw, root / "test_images",
                                  root / "test_labels", labels, train, test))


def prepare_synthetic(workdir: Path, num_train: int, num_test: int, shape: tuple[int, int, int],
                      seed: int = 0) -> TaskSpec:
    """The generator's CT-like organ + small lesion task; its labelled test cases are the test set."""
    from c2fnas_auto.data.synthetic import LABELS, make_synthetic_task

    root = workdir / "tasks" / SYNTHETIC
    if (root / "h2h_task.json").is_file():
        return _spec_from(root, SYNTHETIC)
    raw = make_synthetic_task(workdir / "raw", task_id=TASK_IDS[SYNTHETIC], name="H2HSynthetic",
                              num_train=num_train, num_test=num_test, shape=shape, seed=seed, layout="nnunet",
                              progress=False)
    meta = load_json(raw / "dataset.json", "synthetic dataset.json")
    train = sorted(p.name.removesuffix(".nii.gz") for p in (raw / "labelsTr").glob("*.nii.gz"))
    test = sorted(p.name.removesuffix(".nii.gz") for p in (raw / "labelsTs").glob("*.nii.gz"))
    labels = {k: int(v) for k, v in meta.get("labels", LABELS).items()}
    return _record(root, TaskSpec(SYNTHETIC, TASK_IDS[SYNTHETIC], raw, raw / "imagesTs", raw / "labelsTs",
                                  labels, train, test))


def write_splits(spec: TaskSpec, preprocessed_task_dir: Path) -> Path:
    """The one 5-fold split of the task's training cases, in the file both tools read."""
    preprocessed_task_dir.mkdir(parents=True, exist_ok=True)
    path = preprocessed_task_dir / "splits_final.json"
    splits = make_splits(spec.train_ids, 5, SPLIT_SEED)
    if not path.is_file() or json.loads(path.read_text()) != splits:
        atomic_write_json(path, splits)
    return path
