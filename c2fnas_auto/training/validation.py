"""Final validation of a fold: full cases through the shared sliding window, exported in
the original geometry, scored against the raw reference labels.

Exported cases are skipped when their file already exists (writes are atomic), so an
interrupted validation resumes without redoing finished cases.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from c2fnas_auto.data.dataset import load_dataset
from c2fnas_auto.errors import InputError
from c2fnas_auto.evaluation.evaluate import evaluate_folders
from c2fnas_auto.inference.predictor import Predictor
from c2fnas_auto.preprocessing.storage import load_case


def reference_label_folder(raw_task_dir: Path, case_ids: Sequence[str]) -> Path:
    """The raw folder holding the label files of `case_ids` (labelsTr)."""
    dataset = load_dataset(Path(raw_task_dir))
    by_id = {c.case_id: c for c in dataset.training}
    folders = {Path(by_id[c].label_file).parent for c in case_ids if c in by_id and by_id[c].label_file}
    if len(folders) != 1:
        raise InputError(f"{raw_task_dir}: cannot find one label folder for validation cases "
                         f"{', '.join(list(case_ids)[:3])} (found {len(folders)})")
    return folders.pop()


def predict_and_export(network: nn.Module, plans, preprocessed_dir: Path, case_ids: Sequence[str], out_dir: Path,
                       device: torch.device, step_size: float = 0.5, progress: bool = True,
                       save_probabilities: bool = False) -> list[Path]:
    """The inference Predictor (Gaussian sliding window, mirroring) on each preprocessed case ->
    `out_dir/<case>.nii.gz` in the original geometry; cases already exported are kept.
    `save_probabilities` also keeps `<case>.npz` (the softmax that ensembles are scored from)."""
    predictor = Predictor.from_networks([network], plans, device=device, step_size=step_size, tta=True,
                                        progress=False)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for cid in tqdm(list(case_ids), desc="final validation", unit="case", disable=not progress):
        out_file = out_dir / f"{cid}.nii.gz"
        if not out_file.is_file() or (save_probabilities and not (out_dir / f"{cid}.npz").is_file()):
            data, _, props = load_case(preprocessed_dir, cid, mmap=False)
            predictor.predict_preprocessed(np.ascontiguousarray(data, dtype=np.float32), props, out_file,
                                           save_probabilities=save_probabilities)
        written.append(out_file)
    return written


def final_validation(network: nn.Module, plans, preprocessed_dir: Path, reference_folder: Path,
                     case_ids: Sequence[str], out_dir: Path, device: torch.device, progress: bool = True,
                     save_probabilities: bool = False) -> dict:
    """Predict and export every validation case, then write `out_dir/summary.json` scored against
    `reference_folder` (see `reference_label_folder`) for exactly `case_ids`; returns the summary."""
    predict_and_export(network, plans, Path(preprocessed_dir), case_ids, Path(out_dir), device, progress=progress,
                       save_probabilities=save_probabilities)
    return evaluate_folders(Path(reference_folder), out_dir, plans.labels, Path(out_dir) / "summary.json",
                            progress=progress, case_ids=list(case_ids))
