"""plan_and_preprocess: the whole first stage for one task, from raw folder to plans.

Order matters for data safety: the dataset is loaded and verified before anything
is written; then fingerprint.json, plans.json and the preprocessed cases. A rerun
reuses a fingerprint of the same cases and unchanged source files (else it is recomputed,
with one line saying why), keeps a genotype written by a search
(unless a new one is given; see planning.genotype_source for where it is looked for)
and skips finished cases.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from c2fnas_auto.data.dataset import load_dataset
from c2fnas_auto.data.integrity import verify_dataset
from c2fnas_auto.data.sources import case_sources, changed_cases
from c2fnas_auto.errors import C2FNASError, InputError
from c2fnas_auto.nas.genotype import Genotype
from c2fnas_auto.paths import (
    PLANS_FILE,  # noqa: F401 (also imported from here by older callers)
    preprocessed_dir,
    resolve_task,
    task_name_from_id,
)
from c2fnas_auto.planning.fingerprint import FINGERPRINT_VERSION, compute_fingerprint
from c2fnas_auto.planning.genotype_source import genotype_of_task, previous_genotype
from c2fnas_auto.planning.planner import plan_experiment
from c2fnas_auto.planning.plans import Plans
from c2fnas_auto.preprocessing.preprocessor import preprocess_dataset
from c2fnas_auto.preprocessing.provenance import replan_disagreement
from c2fnas_auto.utils.io import atomic_write_json, load_json

FINGERPRINT_FILE = "fingerprint.json"
log = logging.getLogger(__name__)


def load_task(task: str | int, verify: bool = True, num_workers: int = 1, progress: bool | None = None):
    """Resolve, load and (optionally) verify a raw task; returns the data.dataset.Dataset."""
    dataset = load_dataset(resolve_task(task))
    if not dataset.training:
        raise InputError(f"{dataset.folder}: the dataset has no training cases")
    if verify:
        verify_dataset(dataset, num_workers=num_workers, progress=progress)
    return dataset


def task_folder_name(dataset) -> str:
    """The task's folder name (e.g. Task07_Pancreas): the key of its preprocessed and results folders."""
    return Path(dataset.folder).name


def resolve_genotype(genotype: Any = None, genotype_from: str | int | None = None):
    """A Genotype from an object, a genotype/plans file path, or another task (its plans, else its
    search's winner file: planning.genotype_source)."""
    if genotype is not None and genotype_from is not None:
        raise C2FNASError("give either a genotype file or --genotype-from, not both")
    if genotype is not None:
        return genotype if isinstance(genotype, Genotype) else Genotype.load(Path(genotype))
    if genotype_from is not None:
        return genotype_of_task(task_name_from_id(genotype_from)).genotype
    return None


def _reusable_fingerprint(path: Path, dataset) -> tuple[dict[str, Any] | None, str | None]:
    """(the fingerprint, None) when it was measured from exactly these cases and files, else
    (None, why it must be recomputed); (None, None) when there is none yet."""
    if not path.is_file():
        return None, None
    try:
        fp = load_json(path, "fingerprint")
    except InputError:
        return None, "unreadable"
    cases = fp.get("cases") if isinstance(fp, dict) else None
    if not isinstance(cases, list) or not all(isinstance(c, dict) for c in cases) \
            or fp.get("fingerprint_version") != FINGERPRINT_VERSION:
        return None, "written by another version"
    if [c.get("case_id") for c in cases] != [c.case_id for c in dataset.training]:
        return None, "the training cases changed"
    if (fp.get("channel_names") != {str(k): v for k, v in dataset.channel_names.items()}
            or fp.get("labels") != dict(dataset.labels)):
        return None, "dataset.json's channels or labels changed"
    if any("sources" not in c for c in cases):
        return None, "it records no source files (written by an older version)"
    changed = changed_cases({c["case_id"]: c.get("sources") for c in cases},
                            {c.case_id: case_sources(c, dataset.folder) for c in dataset.training})
    if changed:
        return None, f"source files of {len(changed)} case(s) changed ({', '.join(changed[:3])})"
    return fp, None


def plan_and_preprocess(task: str | int, gpu_memory_gb: float = 8.0, base_channels: int | None = None,
                        num_workers: int = 1, genotype: Any = None, genotype_from: str | int | None = None,
                        verify: bool = True, preprocess: bool = True, progress: bool | None = None,
                        cell_style: str = "c2fnas") -> Plans:
    """Fingerprint, plan and preprocess one task; returns the plans written to plans.json."""
    chosen = resolve_genotype(genotype, genotype_from)
    dataset = load_task(task, verify=verify, num_workers=num_workers, progress=progress)
    out = preprocessed_dir(task_folder_name(dataset))
    plans_path = out / PLANS_FILE
    if chosen is None:  # before anything is written: an unreadable plans file stops here
        found = previous_genotype(task_folder_name(dataset), plans_path)
        chosen = found.genotype if found is not None else None

    fp_path = out / FINGERPRINT_FILE
    fingerprint, stale = _reusable_fingerprint(fp_path, dataset)
    if stale is not None:
        log.warning("%s: recomputing the fingerprint: %s", fp_path, stale)
    new_fingerprint = fingerprint is None
    if fingerprint is None:
        fingerprint = compute_fingerprint(dataset, num_workers=num_workers, progress=progress)

    plans = plan_experiment(fingerprint, dataset, gpu_memory_gb=gpu_memory_gb, base_channels=base_channels,
                            genotype=chosen, cell_style=cell_style)
    if not preprocess:  # before anything is written: plans must never disagree with the arrays silently
        _refuse_stale_arrays(out, plans, dataset)
    if new_fingerprint:
        atomic_write_json(fp_path, fingerprint)
    plans.save(plans_path)
    if preprocess:
        preprocess_dataset(plans.task_name, plans, num_workers=num_workers, dataset=dataset,
                           preprocessed_dir=out, progress=progress)
    return plans


def _refuse_stale_arrays(out: Path, plans: Plans, dataset) -> None:
    """`--no-preprocess` over existing arrays the new plans would not describe: refused, as
    training would otherwise run on the old arrays under the new plans."""
    why = replan_disagreement(out, plans, {c.case_id: case_sources(c, dataset.folder) for c in dataset.training})
    if why is not None:
        raise InputError(f"{out}: --no-preprocess refused: {why}, so the preprocessed arrays there would no longer "
                         f"match plans.json; run c2fnas_plan_and_preprocess -t {plans.task_name} without "
                         "--no-preprocess to redo them (nothing was written)")


def summary_line(plans: Plans, num_cases: int | None = None) -> str:
    """One human-readable line per task for the CLI."""
    fmt = lambda v: "x".join(f"{x:g}" for x in v)  # noqa: E731
    return (f"{plans.task_name}: spacing {fmt(plans.target_spacing)} mm, transpose {plans.transpose_forward}, "
            f"patch {fmt(plans.patch_size)}, batch {plans.batch_size}, base width {plans.base_channels}, "
            f"memory {plans.estimated_memory_gb:.2f}/{plans.gpu_memory_gb:g} GB, "
            f"genotype {plans.genotype.topology_string()}, "
            f"cases {plans.num_training_cases if num_cases is None else num_cases}")
