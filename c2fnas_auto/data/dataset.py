"""Raw task folders read as shipped: Medical Segmentation Decathlon or nnU-Net v2 layout.

Both layouts are normalised into one `Dataset` (channels by index, labels name -> value,
cases with their files) so that no later stage needs to know which layout it came from
and no conversion step is needed. Files are only listed here; whether they exist and
are consistent is the integrity check's job (it reports every problem by file name).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from c2fnas_auto.data.image_io import IMAGE_ENDINGS, file_ending, read_image_info, strip_ending
from c2fnas_auto.errors import InputError
from c2fnas_auto.utils.io import load_json

Layout = Literal["msd", "nnunet"]
_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass
class Case:
    """One case: its channel files (or one 4D file) and optional reference label."""

    case_id: str
    image_files: list[Path]
    label_file: Path | None = None
    problem: str | None = None  # a listing problem kept for this case alone (prediction inputs)


@dataclass
class Dataset:
    """A raw task, independent of the layout it was shipped in."""

    name: str
    folder: Path
    layout: Layout
    channel_names: dict[int, str]
    labels: dict[str, int]
    file_ending: str
    training: list[Case]
    test: list[Case]
    num_training_declared: int | None = None
    description: dict = field(default_factory=dict)

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def dataset_json(self) -> Path:
        return self.folder / "dataset.json"


def _is_junk(name: str) -> bool:
    """macOS resource forks ('._x.nii.gz') and other hidden files shipped in MSD archives."""
    return name.startswith(".")


def _channel_names(raw: object, key: str, where: Path) -> dict[int, str]:
    if not isinstance(raw, dict) or not raw:
        raise InputError(f"{where}: '{key}' must be a non-empty object like {{\"0\": \"CT\"}}")
    try:
        channels = {int(k): str(v) for k, v in raw.items()}
    except (TypeError, ValueError):
        raise InputError(f"{where}: '{key}' keys must be channel numbers, got {list(raw)}") from None
    if sorted(channels) != list(range(len(channels))):
        raise InputError(f"{where}: '{key}' must number channels 0..{len(channels) - 1}, got {sorted(channels)}")
    return dict(sorted(channels.items()))


def _check_labels(labels: dict[str, int], where: Path) -> dict[str, int]:
    values = sorted(labels.values())
    if len(set(values)) != len(values):
        raise InputError(f"{where}: 'labels' assigns the same value to several names: {labels}")
    if values != list(range(len(values))) or len(values) < 2:
        raise InputError(f"{where}: 'labels' must be consecutive integers 0..K-1 with 0 = background and at "
                         f"least one foreground class, got {labels}")
    return dict(sorted(labels.items(), key=lambda kv: kv[1]))


def _msd_labels(raw: object, where: Path) -> dict[str, int]:
    if not isinstance(raw, dict) or not raw:
        raise InputError(f"{where}: 'labels' must be a non-empty object like {{\"0\": \"background\"}}")
    try:
        return _check_labels({str(name): int(value) for value, name in raw.items()}, where)
    except (TypeError, ValueError):
        raise InputError(f"{where}: MSD 'labels' keys must be integers, got {list(raw)}") from None


def _nnunet_labels(raw: object, where: Path) -> dict[str, int]:
    if not isinstance(raw, dict) or not raw:
        raise InputError(f"{where}: 'labels' must be a non-empty object like {{\"background\": 0}}")
    labels: dict[str, int] = {}
    for name, value in raw.items():
        if isinstance(value, (list, tuple)):
            raise InputError(f"{where}: region-based label {name!r}: {value} is not supported "
                             "(one integer per label expected)")
        try:
            labels[str(name)] = int(value)
        except (TypeError, ValueError):
            raise InputError(f"{where}: label {name!r} has non-integer value {value!r}") from None
    return _check_labels(labels, where)


def _msd_path(folder: Path, entry: object, where: Path, what: str) -> Path:
    if not isinstance(entry, str) or not entry:
        raise InputError(f"{where}: {what} entry {entry!r} is not a file path")
    return folder / Path(entry)  # "./imagesTr/x.nii.gz" -> folder/imagesTr/x.nii.gz


def _load_msd(folder: Path, meta: dict, where: Path) -> Dataset:
    channels = _channel_names(meta.get("modality"), "modality", where)
    labels = _msd_labels(meta.get("labels"), where)
    training_raw = meta.get("training", [])
    if not isinstance(training_raw, list):
        raise InputError(f"{where}: 'training' must be a list of {{\"image\": ..., \"label\": ...}}")
    training: list[Case] = []
    for entry in training_raw:
        if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
            raise InputError(f"{where}: training entry {entry!r} needs 'image' and 'label'")
        image = _msd_path(folder, entry["image"], where, "training image")
        if _is_junk(image.name):
            continue
        label = _msd_path(folder, entry["label"], where, "training label")
        training.append(Case(strip_ending(image), [image], label))
    test: list[Case] = []
    test_raw = meta.get("test", [])
    if not isinstance(test_raw, list):
        raise InputError(f"{where}: 'test' must be a list of image paths")
    for entry in test_raw:
        image = _msd_path(folder, entry["image"] if isinstance(entry, dict) else entry, where, "test image")
        if _is_junk(image.name):
            continue
        # labelsTs/ is not part of MSD; our synthetic tasks ship it so a demo can evaluate.
        label = folder / "labelsTs" / image.name
        test.append(Case(strip_ending(image), [image], label if label.is_file() else None))
    ending = file_ending(training[0].image_files[0]) if training else ".nii.gz"
    num_declared = meta.get("numTraining")
    return Dataset(name=str(meta.get("name", folder.name)), folder=folder, layout="msd", channel_names=channels,
                   labels=labels, file_ending=ending, training=training, test=test,
                   num_training_declared=int(num_declared) if isinstance(num_declared, int) else None,
                   description={k: v for k, v in meta.items() if k not in ("training", "test")})


def _group_channel_files(folder: Path, ending: str) -> dict[str, dict[int, Path]]:
    """{case_id: {channel: file}} for nnU-Net style CASE_XXXX<ending> files in `folder`."""
    groups: dict[str, dict[int, Path]] = {}
    if not folder.is_dir():
        return groups
    for p in sorted(folder.iterdir()):
        if _is_junk(p.name) or not p.name.endswith(ending) or not p.is_file():
            continue
        m = _CHANNEL_FILE.match(p.name[: -len(ending)])
        if m is None:
            raise InputError(f"{p}: file name does not follow CASE_XXXX{ending} (XXXX = 4-digit channel)")
        groups.setdefault(m.group("case"), {})[int(m.group("channel"))] = p
    return groups


def _nnunet_cases(images: Path, labels: Path | None, ending: str, num_channels: int) -> list[Case]:
    cases = []
    for case_id, found in _group_channel_files(images, ending).items():
        # Expected files, present or not: the integrity check reports missing channels.
        files = [images / f"{case_id}_{c:04d}{ending}" for c in range(num_channels)]
        extra = sorted(set(found) - set(range(num_channels)))
        if extra:
            raise InputError(f"{found[extra[0]]}: channel {extra[0]:04d} is not declared in dataset.json "
                             f"channel_names (0..{num_channels - 1})")
        label = labels / f"{case_id}{ending}" if labels is not None else None
        if label is not None and not label.is_file() and labels.name == "labelsTs":
            label = None
        cases.append(Case(case_id, files, label))
    return cases


def _load_nnunet(folder: Path, meta: dict, where: Path) -> Dataset:
    channels = _channel_names(meta.get("channel_names"), "channel_names", where)
    labels = _nnunet_labels(meta.get("labels"), where)
    ending = meta.get("file_ending")
    if not isinstance(ending, str) or not ending.startswith("."):
        raise InputError(f"{where}: 'file_ending' must be a string like \".nii.gz\", got {ending!r}")
    if "dataset" in meta:
        raise InputError(f"{where}: the 'dataset' file-list key is not supported; use imagesTr/labelsTr naming")
    training = _nnunet_cases(folder / "imagesTr", folder / "labelsTr", ending, len(channels))
    test = _nnunet_cases(folder / "imagesTs", folder / "labelsTs", ending, len(channels))
    num_declared = meta.get("numTraining")
    return Dataset(name=folder.name, folder=folder, layout="nnunet", channel_names=channels, labels=labels,
                   file_ending=ending, training=training, test=test,
                   num_training_declared=int(num_declared) if isinstance(num_declared, int) else None,
                   description=dict(meta))


def load_dataset(task_folder: str | Path) -> Dataset:
    """Read `task_folder/dataset.json` in MSD or nnU-Net v2 layout into a Dataset."""
    folder = Path(task_folder)
    where = folder / "dataset.json"
    meta = load_json(where, "dataset.json")
    if not isinstance(meta, dict):
        raise InputError(f"{where}: expected a JSON object")
    if "channel_names" in meta:
        return _load_nnunet(folder, meta, where)
    if "modality" in meta:
        return _load_msd(folder, meta, where)
    raise InputError(f"{where}: neither MSD ('modality', 'training') nor nnU-Net v2 ('channel_names', "
                     "'file_ending') layout")


def cases_from_folder(folder: str | Path, num_channels: int, file_ending: str = ".nii.gz",
                      per_case_problems: bool = False) -> list[Case]:
    """Prediction inputs in `folder`: nnU-Net CASE_XXXX channel files or single (4D) files.

    The folder is taken as nnU-Net style when every image file ends in a 4-digit
    channel number and channel 0000 occurs; otherwise each file is a case of its own
    (MSD: a 3D file for one channel, a 4D file for several). A case with the wrong
    channel count or dimension raises InputError naming it; with `per_case_problems` the
    message is kept in that case's `problem` instead, so a predictor fails that case alone.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: input folder not found")
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and not _is_junk(p.name) and p.name.endswith(file_ending))
    if not files:
        endings = ", ".join(IMAGE_ENDINGS)
        raise InputError(f"{folder}: no {file_ending} images found (supported endings: {endings})")
    stems = [p.name[: -len(file_ending)] for p in files]
    matches = [_CHANNEL_FILE.match(s) for s in stems]
    nnunet_style = all(matches) and any(int(m.group("channel")) == 0 for m in matches if m)
    cases: list[Case] = []
    if nnunet_style:
        groups: dict[str, dict[int, Path]] = {}
        for p, m in zip(files, matches):
            assert m is not None
            groups.setdefault(m.group("case"), {})[int(m.group("channel"))] = p
        for case_id, found in groups.items():
            problem = None
            if sorted(found) != list(range(num_channels)):
                got = ", ".join(f"{c:04d}" for c in sorted(found))
                want = ", ".join(f"{c:04d}" for c in range(num_channels))
                problem = f"{folder / case_id}: case has channel files {got}, the plans expect {want}"
            cases.append(_listed(Case(case_id, [found[c] for c in sorted(found)], None), problem, per_case_problems))
        return cases
    for p in files:
        problem = None
        try:
            info = read_image_info(p)
        except InputError as exc:
            info, problem = None, str(exc)
        if info is not None and info.dimension not in (3, 4):
            problem = f"{p}: image is {info.dimension}D, expected a 3D volume (or 4D for several channels)"
        elif info is not None and info.num_channels != num_channels:
            problem = f"{p}: case has {info.num_channels} channel(s), the plans expect {num_channels}"
        cases.append(_listed(Case(strip_ending(p), [p], None), problem, per_case_problems))
    return cases


def _listed(case: Case, problem: str | None, keep: bool) -> Case:
    """The case, carrying `problem` when kept per case; else the problem is raised."""
    if problem is not None and not keep:
        raise InputError(problem)
    case.problem = problem
    return case
