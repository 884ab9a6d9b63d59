"""The study's tasks: a synthetic source task, a synthetic MR transfer task and a task
cut from the real TotalSegmentator CT, each with held-out cases the search never sees.

Held-out cases are the task's imagesTs/labelsTs, preprocessed with the task's plans into
`<workdir>/heldout/<task>/data`, a folder outside the task's preprocessed directory: the
search and the training read only the preprocessed directory (its splits list only
imagesTr cases), so no held-out case can reach them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from c2fnas_auto.errors import InputError
from c2fnas_auto.utils.io import atomic_save_npy, atomic_write_json, atomic_write_text

REAL_DATA = Path("/work/shared/data/totalsegmentator")
HIPPOCAMPUS = Path("/work/shared/data/hippocampus/Task04_Hippocampus")
HIPPOCAMPUS_LABELS = {"background": 0, "anterior": 1, "posterior": 2}
REAL_CT, REAL_SEG = "example_ct_sm.nii.gz", "example_seg.nii.gz"
# TotalSegmentator v2 ids -> our labels (both kidneys are one class)
REAL_LABELS = {"background": 0, "liver": 1, "spleen": 2, "kidney": 3}
_REAL_MAP = {5: 1, 1: 2, 2: 3, 3: 3}


@dataclass(frozen=True)
class TaskSpec:
    """One task of the study. `kind` is 'synthetic' (c2fnas_auto.data.synthetic) or 'real_ct'."""

    key: str              # short name used in the results ("source", "mr_aniso", "real_ct")
    kind: str
    task_id: int
    name: str
    num_train: int
    num_test: int
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float] = (3.0, 1.0, 1.0)
    modality: str = "CT"
    channels: int = 1
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        if self.kind == "hippocampus":
            return (f"real MRI (MSD Task04 hippocampus, anterior/posterior), {self.num_train} train / "
                    f"{self.num_test} held-out subjects")
        if self.kind == "real_ct":
            return (f"real CT (TotalSegmentator example, liver/spleen/kidney), crops {self.shape} at 3 mm, "
                    f"{self.num_train} train / {self.num_test} held-out crops from disjoint slabs")
        return (f"synthetic {self.modality} x{self.channels}, shape {self.shape}, spacing {self.spacing} mm, "
                f"{self.num_train} train / {self.num_test} held-out")


def make_task(raw_root: Path, spec: TaskSpec, real_data: Path = REAL_DATA) -> Path:
    """Write (or find) the raw task folder."""
    if spec.kind == "synthetic":
        from c2fnas_auto.data.synthetic import make_synthetic_task

        return make_synthetic_task(raw_root, task_id=spec.task_id, name=spec.name, num_train=spec.num_train,
                                   num_test=spec.num_test, shape=spec.shape, spacing=spec.spacing, seed=spec.seed,
                                   layout="nnunet", modality=spec.modality, channels=spec.channels,
                                   progress=False)
    if spec.kind == "real_ct":
        return make_real_ct_task(raw_root, spec, real_data)
    if spec.kind == "hippocampus":
        return make_hippocampus_task(raw_root, spec, Path(spec.extra.get("source", HIPPOCAMPUS)))
    raise InputError(f"task {spec.key}: unknown kind {spec.kind!r} (expected 'synthetic', 'real_ct' or 'hippocampus')")


def _publish_task(build: Path, target: Path, spec: TaskSpec, description: str, channel: str,
                  labels: dict[str, int], provenance: dict[str, Any]) -> Path:
    """Write the task's dataset.json, then rename the build folder into place: a task folder
    exists only complete, and `provenance` (compared on the next call) says what it was made from."""
    meta = {"name": spec.name, "description": description, "channel_names": {"0": channel},
            "labels": dict(labels), "numTraining": spec.num_train, "file_ending": ".nii.gz", **provenance}
    atomic_write_json(build / "dataset.json", meta)
    build.rename(target)
    return target


def make_hippocampus_task(raw_root: Path, spec: TaskSpec, source: Path = HIPPOCAMPUS) -> Path:
    """A seeded draw of `num_train` + `num_test` labelled subjects of MSD Task04 (real MRI), the
    test subjects as imagesTs/labelsTs: held-out cases are other people, not other slices."""
    import shutil

    target = raw_root / f"Dataset{spec.task_id:03d}_{spec.name}"
    meta_key = {"derived_from": "MSD Task04_Hippocampus", "spec": {"num_train": spec.num_train,
                                                                   "num_test": spec.num_test, "seed": spec.seed}}
    if (target / "dataset.json").is_file():
        if json.loads((target / "dataset.json").read_text()).get("hippocampus") == meta_key:
            return target
        raise InputError(f"{target}: exists with other contents; remove it or choose another task id")
    images = sorted((source / "imagesTr").glob("*.nii.gz"))
    cases = [f.name[:-len(".nii.gz")] for f in images if (source / "labelsTr" / f.name).is_file()]
    if len(cases) < spec.num_train + spec.num_test:
        raise InputError(f"{source}: {len(cases)} labelled subjects, the task needs {spec.num_train + spec.num_test}")
    rng = np.random.default_rng(spec.seed)
    chosen = [cases[i] for i in rng.permutation(len(cases))[:spec.num_train + spec.num_test]]
    build = raw_root / f".{target.name}.tmp"
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (build / sub).mkdir(parents=True, exist_ok=True)
    for i, case in enumerate(chosen):
        split = "Tr" if i < spec.num_train else "Ts"
        shutil.copyfile(source / "imagesTr" / f"{case}.nii.gz", build / f"images{split}" / f"{case}_0000.nii.gz")
        shutil.copyfile(source / "labelsTr" / f"{case}.nii.gz", build / f"labels{split}" / f"{case}.nii.gz")
    return _publish_task(build, target, spec, "real hippocampus MRI, MSD Task04 (anterior, posterior)", "MRI",
                         HIPPOCAMPUS_LABELS, {"hippocampus": meta_key})


def _slab_crop(rng: np.random.Generator, z_range: tuple[int, int], shape_yx: tuple[int, int],
               crop: tuple[int, int, int]) -> tuple[slice, slice, slice]:
    z0 = int(rng.integers(z_range[0], max(z_range[0], z_range[1] - crop[0]) + 1))
    y0 = int(rng.integers(0, shape_yx[0] - crop[1] + 1))
    x0 = int(rng.integers(0, shape_yx[1] - crop[2] + 1))
    return slice(z0, z0 + crop[0]), slice(y0, y0 + crop[1]), slice(x0, x0 + crop[2])


def make_real_ct_task(raw_root: Path, spec: TaskSpec, real_data: Path = REAL_DATA) -> Path:
    """Crops of the one real CT: training crops from the upper slab of slices, held-out
    crops from the lower slab (disjoint voxels, so a held-out crop is anatomy the network
    never saw), each with its own intensity scale/offset and noise; labels liver, spleen,
    kidneys. One patient only: the held-out cases test unseen slices, not unseen people."""
    from c2fnas_auto.data.image_io import Geometry, read_image, read_segmentation, write_image, write_segmentation

    target = raw_root / f"Dataset{spec.task_id:03d}_{spec.name}"
    meta_key = {"derived_from": [REAL_CT, REAL_SEG], "spec": {"num_train": spec.num_train, "num_test": spec.num_test,
                                                              "crop": list(spec.shape), "seed": spec.seed}}
    if (target / "dataset.json").is_file():
        if json.loads((target / "dataset.json").read_text()).get("real_ct") == meta_key:
            return target
        raise InputError(f"{target}: exists with other contents; remove it or choose another task id")
    ct_file, seg_file = real_data / REAL_CT, real_data / REAL_SEG
    for f in (ct_file, seg_file):
        if not f.is_file():
            raise InputError(f"{f}: real CT volume missing (see {real_data / 'README.md'})")
    image, geometry = read_image([ct_file])
    seg_src, _ = read_segmentation(seg_file)
    seg = np.zeros_like(seg_src, dtype=np.uint8)
    for src, dst in _REAL_MAP.items():
        seg[seg_src == src] = dst
    nz = image.shape[1]
    split = nz // 2
    rng = np.random.default_rng(spec.seed)
    build = raw_root / f".{target.name}.tmp"
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (build / sub).mkdir(parents=True, exist_ok=True)
    jobs = [("Tr", i, (0, split)) for i in range(spec.num_train)] + \
           [("Ts", i, (split, nz)) for i in range(spec.num_test)]
    for split_name, i, z_range in jobs:
        cid = f"realct_{split_name.lower()}{i:03d}"
        crop = _slab_crop(rng, z_range, image.shape[2:], spec.shape)
        img = image[0][crop].astype(np.float32)
        img = img * rng.uniform(0.93, 1.07) + rng.uniform(-25.0, 25.0) + rng.normal(0.0, 10.0, img.shape)
        origin = tuple(float(o) for o in geometry.origin)  # crops keep the volume's spacing and direction
        geo = Geometry(geometry.spacing, origin, geometry.direction)
        write_image(np.clip(np.round(img), -1024, 3071).astype(np.int16), geo,
                    build / f"images{split_name}" / f"{cid}_0000.nii.gz")
        write_segmentation(seg[crop], geo, build / f"labels{split_name}" / f"{cid}.nii.gz")
    return _publish_task(build, target, spec, "crops of the TotalSegmentator example CT (see README there)", "CT",
                         REAL_LABELS, {"real_ct": meta_key})


def prepare_heldout(task_dir: Path, plans: Any, out_dir: Path) -> list[str]:
    """Preprocess the task's labelled test cases with its plans into `out_dir/data`;
    returns their ids. Finished cases are kept (resumable)."""
    from c2fnas_auto.data.dataset import load_dataset
    from c2fnas_auto.preprocessing.preprocessor import preprocess_case
    from c2fnas_auto.preprocessing.storage import case_paths, is_case_finished

    cases = [c for c in load_dataset(task_dir).test if c.label_file is not None]
    if not cases:
        raise InputError(f"{task_dir}: no labelled test cases (imagesTs + labelsTs) to hold out")
    folder = out_dir / "data"
    folder.mkdir(parents=True, exist_ok=True)
    for case in cases:
        if is_case_finished(folder, case.case_id):
            continue
        data, seg, props = preprocess_case(case.image_files, plans, case.label_file, case_id=case.case_id)
        npy, seg_path, props_path = case_paths(folder, case.case_id)
        atomic_save_npy(npy, data)
        atomic_save_npy(seg_path, seg)
        props.pop("class_locations", None)
        atomic_write_text(props_path, json.dumps(props, separators=(",", ":")) + "\n")
    return sorted(c.case_id for c in cases)
