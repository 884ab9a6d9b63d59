"""Predict a folder of new images with one or several trained folds.

Every case is preprocessed with the training code (`preprocess_case`), predicted by each
fold's network with the shared sliding window, the folds' softmax probabilities are
averaged (ensembling), and the result is exported in the input's own geometry. A case
that fails is reported by name and the others go on; the caller gets the failures.
"""

from __future__ import annotations

import os
import re
import sys
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm import tqdm

from c2fnas_auto.errors import C2FNASError, InputError
from c2fnas_auto.inference.export import export_prediction
from c2fnas_auto.inference.postprocessing import find_postprocessing, load_postprocessing
from c2fnas_auto.inference.sliding_window import sliding_window_predict
from c2fnas_auto.utils.device import resolve_device
from c2fnas_auto.utils.io import atomic_write_json

CHECKPOINTS = ("final", "best", "latest")


@dataclass
class FoldModel:
    """One trained fold ready to predict."""

    fold: str
    network: torch.nn.Module
    checkpoint_file: Path


def _results_root_lookup(task: str | int, plans_name: str) -> Path:
    """Results folder of a task: via the raw folder when present, else by name in the results root."""
    from c2fnas_auto import paths

    try:
        return paths.results_dir(paths.task_name_from_id(task), plans_name)
    except C2FNASError:
        root = paths.results_root()
        text = str(task)
        if text.isdigit():
            n = int(text)
            pattern = re.compile(rf"^(Task0*{n}|Dataset0*{n})_")
            found = [p for p in root.iterdir() if p.is_dir() and pattern.match(p.name)] if root.is_dir() else []
        else:
            found = [root / text] if (root / text).is_dir() else []
        if len(found) != 1:
            raise InputError(f"{root}: no single results folder for task {task} (found {len(found)})") from None
        return found[0] / plans_name


def resolve_model_folder(task: str | int | None, model_folder: str | os.PathLike | None,
                         plans_name: str = "C2FNASPlans") -> Path:
    if (task is None) == (model_folder is None):
        raise InputError("give exactly one of a task (-t) or a results folder (-m)")
    folder = Path(model_folder) if model_folder is not None else _results_root_lookup(task, plans_name)
    if not folder.is_dir():
        raise InputError(f"{folder}: results folder not found (train a fold first)")
    return folder


def available_folds(model_folder: Path, checkpoint: str) -> list[str]:
    """Folds with a `checkpoint_<checkpoint>.pth`, in numeric order, then `all`."""
    found = [p.name[len("fold_"):] for p in model_folder.glob("fold_*")
             if (p / f"checkpoint_{checkpoint}.pth").is_file()]
    return sorted(found, key=lambda f: (not f.isdigit(), int(f) if f.isdigit() else 0, f))


def load_fold(model_folder: Path, fold: str | int, checkpoint: str, device: torch.device) -> tuple[FoldModel, Any]:
    """Network and plans of one fold from its checkpoint (keys `network_weights`, `plans`,
    `genotype`, `network_config`)."""
    from c2fnas_auto.nas.config import NetworkConfig
    from c2fnas_auto.nas.genotype import Genotype
    from c2fnas_auto.nas.network import build_network
    from c2fnas_auto.planning.plans import Plans
    from c2fnas_auto.training.checkpoint import load_checkpoint

    ckpt_file = model_folder / f"fold_{fold}" / f"checkpoint_{checkpoint}.pth"
    if not ckpt_file.is_file():
        raise InputError(f"{ckpt_file}: checkpoint not found (is fold {fold} trained?)")
    ckpt = load_checkpoint(ckpt_file)
    missing = [k for k in ("network_weights", "plans", "genotype", "network_config") if k not in ckpt]
    if missing:
        raise InputError(f"{ckpt_file}: checkpoint lacks {', '.join(missing)}")
    plans = ckpt["plans"] if isinstance(ckpt["plans"], Plans) else Plans.from_dict(ckpt["plans"], str(ckpt_file))
    genotype = ckpt["genotype"]
    if isinstance(genotype, dict):
        genotype = Genotype.from_dict(genotype)
    config = ckpt["network_config"]
    if isinstance(config, dict):
        config = NetworkConfig.from_dict(config)
    network = build_network(genotype, config)
    try:
        network.load_state_dict(ckpt["network_weights"])
    except RuntimeError as exc:
        raise InputError(f"{ckpt_file}: weights do not fit the stored network ({str(exc).splitlines()[0]})") from None
    network.to(device).eval()
    return FoldModel(str(fold), network, ckpt_file), plans


def predict_probabilities(models: Sequence[FoldModel], data: np.ndarray | torch.Tensor, plans: Any,
                          device: torch.device, tta: bool = True, step_size: float = 0.5,
                          tile_batch_size: int = 2) -> torch.Tensor:
    """Mean over folds of the softmax of each fold's sliding-window logits, (K, z, y, x) on the CPU."""
    total: torch.Tensor | None = None
    for m in models:
        logits = sliding_window_predict(m.network, torch.as_tensor(data), plans.patch_size, plans.num_classes,
                                        step_size=step_size, mirror_axes=(0, 1, 2) if tta else None,
                                        device=device, tile_batch_size=tile_batch_size)
        probs = torch.softmax(logits, dim=0)
        total = probs if total is None else total + probs
    assert total is not None
    return total / len(models)


def _check_output_folder(input_folder: Path, output_folder: Path) -> None:
    inp, out = input_folder.resolve(), output_folder.resolve()
    if out == inp or inp in out.parents:
        raise InputError(f"{output_folder}: output folder must not be the input folder or inside it")


def _export_job(probs: np.ndarray, properties: dict, plans: Any, out_file: Path, save_probabilities: bool,
                postprocessing: dict | None) -> None:
    export_prediction(probs, properties, plans, out_file, save_probabilities, postprocessing)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text and not isinstance(exc, C2FNASError) else (
        text[0] if text else type(exc).__name__)


def _finished(out_file: Path) -> bool:
    """An existing output counts as done only if it is complete: our writes are atomic, but a
    file left by another tool or a crashed copy may be cut short and must be predicted again."""
    from c2fnas_auto.data.image_io import check_complete

    if not out_file.is_file():
        return False
    try:
        check_complete(out_file)
    except InputError:
        tqdm.write(f"{out_file}: incomplete output from an earlier run, predicting it again", file=sys.stderr)
        return False
    return True


def predict_folder(input_folder: str | os.PathLike, output_folder: str | os.PathLike, task: str | int | None = None,
                   model_folder: str | os.PathLike | None = None, folds: Sequence[str | int] | None = None,
                   checkpoint: str = "final", device: str | torch.device | None = None, tta: bool = True,
                   step_size: float = 0.5, save_probabilities: bool = False, continue_: bool = False,
                   num_export_workers: int = 1, postprocessing: bool = True, file_ending: str = ".nii.gz",
                   plans_name: str = "C2FNASPlans", tile_batch_size: int = 2,
                   progress: bool = True) -> list[tuple[str, str]]:
    """Predict every case of `input_folder` into `output_folder`; returns [(case_id, error)]."""
    from c2fnas_auto.data.dataset import cases_from_folder
    from c2fnas_auto.preprocessing.preprocessor import preprocess_case

    input_folder, output_folder = Path(input_folder), Path(output_folder)
    if checkpoint not in CHECKPOINTS:
        raise InputError(f"checkpoint '{checkpoint}' is not one of {', '.join(CHECKPOINTS)}")
    if not 0 < step_size <= 1:
        raise InputError(f"step size {step_size} must be in (0, 1]")
    if not input_folder.is_dir():
        raise InputError(f"{input_folder}: input folder not found")
    _check_output_folder(input_folder, output_folder)
    folder = resolve_model_folder(task, model_folder, plans_name)
    fold_list = [str(f) for f in folds] if folds else available_folds(folder, checkpoint)
    if not fold_list:
        raise InputError(f"{folder}: no fold has checkpoint_{checkpoint}.pth")
    dev = resolve_device(str(device) if device is not None else None)
    loaded = [load_fold(folder, f, checkpoint, dev) for f in fold_list]
    models = [m for m, _ in loaded]
    plans = loaded[0][1]
    for m, p in loaded[1:]:
        if p.num_classes != plans.num_classes or list(p.patch_size) != list(plans.patch_size):
            raise InputError(f"{m.checkpoint_file}: plans differ from fold {models[0].fold} (cannot ensemble)")
    pp = None
    if postprocessing:
        pp_file = find_postprocessing(folder, fold_list)
        pp = load_postprocessing(pp_file) if pp_file is not None else None

    cases = cases_from_folder(input_folder, plans.num_channels, file_ending)
    output_folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(output_folder / "prediction_info.json", {
        "model_folder": str(folder), "folds": fold_list, "checkpoint": checkpoint, "tta": tta,
        "step_size": step_size, "postprocessing": pp, "input_folder": str(input_folder)})
    todo = [(c, output_folder / f"{c.case_id}{file_ending}") for c in cases]
    if continue_:
        todo = [(c, f) for c, f in todo if not _finished(f)]
    failures: list[tuple[str, str]] = []

    def fail(case_id: str, exc: BaseException, what: str = "failed") -> None:
        failures.append((case_id, _one_line(exc)))
        tqdm.write(f"case {case_id}: {what}: {_one_line(exc)}", file=sys.stderr)

    def load(case: Any) -> tuple:
        return preprocess_case(case.image_files, plans, case_id=case.case_id)

    pool = ProcessPoolExecutor(max_workers=num_export_workers) if num_export_workers > 1 else None
    pending: list[tuple[str, Future]] = []
    # the next case is read and preprocessed in a thread while the network runs on this one
    loader = ThreadPoolExecutor(max_workers=1)
    next_job = loader.submit(load, todo[0][0]) if todo else None
    try:
        for i, (case, out_file) in enumerate(tqdm(todo, desc="predict", unit="case", disable=not progress)):
            job = next_job
            next_job = loader.submit(load, todo[i + 1][0]) if i + 1 < len(todo) else None
            try:
                data, _, properties = job.result()
                probs = predict_probabilities(models, data, plans, dev, tta, step_size, tile_batch_size).numpy()
                del data
                if pool is None:
                    _export_job(probs, properties, plans, out_file, save_probabilities, pp)
                    continue
                pending.append((case.case_id, pool.submit(_export_job, probs, properties, plans, out_file,
                                                          save_probabilities, pp)))
                while len(pending) > 2 * num_export_workers:  # bound the probabilities held in memory
                    cid, fut = pending.pop(0)
                    try:
                        fut.result()
                    except Exception as exc:
                        fail(cid, exc, "export failed")
            except Exception as exc:  # one bad case must not stop the others
                fail(case.case_id, exc)
        for case_id, fut in pending:
            try:
                fut.result()
            except Exception as exc:
                fail(case_id, exc, "export failed")
    finally:
        loader.shutdown(wait=True, cancel_futures=True)
        if pool is not None:
            pool.shutdown()
    return failures
