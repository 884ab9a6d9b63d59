"""The Predictor: trained folds of one or several experiments, set up once, predicting many cases.

`Predictor(model_folders, folds, device, step_size, tta, ...)` loads each fold's network
once. Every case is preprocessed with the training code (`preprocess_case`), predicted by
each fold's network with the shared sliding window, the softmax probabilities of all folds
(of all experiments) are averaged, and the result is brought back to the input's geometry.

Folds of one experiment must share genotype, network config, classes and patch; several
model folders are different experiments on purpose and must share what the averaged
probabilities mean (labels) and what the networks read (channels, normalization, spacing,
transposition). The CLI (`c2fnas_predict`), the trainer's final validation and Python users
all go through this class. A case that fails is reported by name and the others go on.
"""

from __future__ import annotations

import json
import os
import sys
import zipfile
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from c2fnas_auto.data.dataset import Case, cases_from_folder
from c2fnas_auto.data.image_io import Geometry, check_complete, strip_ending
from c2fnas_auto.data.integrity import read_case_to_predict
from c2fnas_auto.errors import C2FNASError, InputError
from c2fnas_auto.inference.experiments import available_folds, genotype_id_of_folder
from c2fnas_auto.inference.export import (
    export_prediction,
    labels_from_probabilities,
    probabilities_to_original,
    probability_files,
)
from c2fnas_auto.inference.postprocessing import find_postprocessing, load_postprocessing
from c2fnas_auto.inference.sliding_window import sliding_window_predict
from c2fnas_auto.nas.checkpoint import checkpoint_file_name, trained_network
from c2fnas_auto.nas.execution import ExecutionOptions, prepare_network
from c2fnas_auto.planning.plans import Plans
from c2fnas_auto.planning.size_check import check_prediction_fits
from c2fnas_auto.preprocessing.preprocessor import preprocess_case
from c2fnas_auto.preprocessing.resample_bound import check_case_header
from c2fnas_auto.utils.device import resolve_device
from c2fnas_auto.utils.io import atomic_write_json, load_json

# plans fields experiments must share to be averaged: the same classes, and inputs preprocessed alike
SHARED_ACROSS_EXPERIMENTS = ("labels", "num_classes", "channel_names", "normalization", "target_spacing",
                             "transpose_forward", "resampling")
IDENTITY_DIRECTION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


@dataclass
class FoldModel:
    """One trained fold ready to predict, with the plans it was trained under."""

    fold: str
    network: nn.Module
    plans: Any  # planning.plans.Plans
    checkpoint_file: Path | None = None
    experiment: Path | None = None
    identity: tuple = ()  # nas.checkpoint.TrainedNetwork.identity(): genotype + network config


def load_fold(model_folder: Path, fold: str | int, checkpoint: str, device: torch.device) -> FoldModel:
    """Network and plans of one fold from its checkpoint; its genotype must be the one the
    experiment folder is named after."""
    ckpt_file = Path(model_folder) / f"fold_{fold}" / checkpoint_file_name(checkpoint)
    if not ckpt_file.is_file():
        raise InputError(f"{ckpt_file}: checkpoint not found (is fold {fold} trained?)")
    trained = trained_network(ckpt_file)
    expected = genotype_id_of_folder(Path(model_folder))
    if expected is not None and trained.genotype.short_id() != expected:
        raise InputError(f"{ckpt_file}: trained with genotype {trained.genotype.short_id()}, but its experiment "
                         f"folder is named for genotype {expected} (folds of different genotypes cannot be mixed)")
    plans = Plans.from_dict(trained.plans, str(ckpt_file))
    trained.network.to(device).eval()
    return FoldModel(str(fold), trained.network, plans, ckpt_file, Path(model_folder), trained.identity())


def _check_folds(models: Sequence[FoldModel]) -> None:
    """Folds of one experiment: same genotype and network, same classes and patch."""
    first = models[0]
    for m in models[1:]:
        where = f"fold {first.fold} of {first.experiment}"
        if m.identity != first.identity:
            raise InputError(f"{m.checkpoint_file}: genotype or network config differs from {where} "
                             "(cannot ensemble folds of different genotypes; train them as separate experiments)")
        if m.plans.num_classes != first.plans.num_classes or list(m.plans.patch_size) != list(first.plans.patch_size):
            raise InputError(f"{m.checkpoint_file}: classes or patch differ from {where} (cannot ensemble)")


def _comparable(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _check_experiments(groups: Sequence[Sequence[FoldModel]]) -> None:
    """Several experiments: same labels and channels, inputs preprocessed alike."""
    first = groups[0][0]
    for group in groups[1:]:
        other = group[0]
        for name in SHARED_ACROSS_EXPERIMENTS:
            a, b = getattr(first.plans, name), getattr(other.plans, name)
            if _comparable(a) != _comparable(b):
                raise InputError(f"{other.experiment}: plans {name} {b} differ from {first.experiment}'s {a} "
                                 "(experiments must share classes and preprocessing to be ensembled)")


def _fold_list(folds: Sequence[str | int] | str | int | None) -> list[str] | None:
    if folds is None:
        return None
    if isinstance(folds, (str, int)):
        return [str(folds)]
    return [str(f) for f in folds] or None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text and not isinstance(exc, C2FNASError) else (
        text[0] if text else type(exc).__name__)


def _finished(out_file: Path, save_probabilities: bool = False) -> bool:
    """A case counts as done only when every output the run asks for is there and complete.

    Our writes are atomic, but a file left by another tool or a crashed copy may be cut short,
    and a kill between the image's rename and the probabilities' leaves the image alone: with
    `save_probabilities` the case's `.npz` and `.json` must be there too, else it is redone."""
    if not out_file.is_file():
        return False
    try:
        check_complete(out_file)
    except InputError:
        tqdm.write(f"{out_file}: incomplete output from an earlier run, predicting it again", file=sys.stderr)
        return False
    if save_probabilities:
        missing = [f.name for f in probability_files(out_file) if not _readable_companion(f)]
        if missing:
            tqdm.write(f"{out_file}: {', '.join(missing)} missing or unreadable, predicting it again", file=sys.stderr)
            return False
    return True


def _readable_companion(path: Path) -> bool:
    """The `.npz` opens as a zip and the `.json` parses (both are written atomically by us)."""
    if not path.is_file():
        return False
    try:
        if path.suffix == ".npz":
            with zipfile.ZipFile(path) as zf:
                return "probabilities.npy" in zf.namelist()
        load_json(path, "case properties")
    except (OSError, ValueError, zipfile.BadZipFile, InputError):
        return False
    return True


@dataclass
class LoadedModels:
    """Networks ready to predict, where they came from (`Predictor.info()`) and their postprocessing."""

    models: list[FoldModel]
    source: dict[str, Any]
    postprocessing: dict | str | os.PathLike | None = None


def load_experiments(model_folders: str | os.PathLike | Sequence[str | os.PathLike],
                     folds: Sequence[str | int] | str | int | None, checkpoint: str, device: torch.device,
                     postprocessing: bool | dict | str | os.PathLike | None) -> LoadedModels:
    """The folds of one or several experiment folders (see `Predictor`), checked to fit together."""
    if isinstance(model_folders, (str, os.PathLike)):
        model_folders = [model_folders]
    folders = [Path(f) for f in model_folders]
    if not folders:
        raise InputError("no model folder given")
    resolved = [f.resolve() for f in folders]
    twice = sorted({str(f) for f in folders if resolved.count(f.resolve()) > 1})
    if twice:
        raise InputError(f"{twice[0]}: model folder given twice (its folds would weigh double)")
    checkpoint_file_name(checkpoint)
    groups, fold_lists = [], []
    for folder in folders:
        if not folder.is_dir():
            raise InputError(f"{folder}: results folder not found (train a fold first)")
        fold_list = _fold_list(folds) or available_folds(folder, checkpoint)
        if not fold_list:
            raise InputError(f"{folder}: no fold has {checkpoint_file_name(checkpoint)}")
        group = [load_fold(folder, f, checkpoint, device) for f in fold_list]
        _check_folds(group)
        groups.append(group)
        fold_lists.append(fold_list)
    _check_experiments(groups)
    if postprocessing is True:
        pp_file = find_postprocessing(folders[0], fold_lists[0]) if len(folders) == 1 else None
        postprocessing = load_postprocessing(pp_file) if pp_file is not None else None
    return LoadedModels([m for g in groups for m in g],
                        {"model_folders": [str(f) for f in folders], "folds": fold_lists, "checkpoint": checkpoint},
                        postprocessing)


class Predictor:
    """Trained folds of one or several experiments, loaded once.

    `model_folders`: one experiment folder (holding fold_k/) or several (an ensemble of
    experiments), or networks already loaded (`LoadedModels`, see `from_networks`). `folds`:
    None = every fold with the checkpoint, else a list (`"all"` is the fold trained on all
    cases, as in nnU-Net). `postprocessing`: True = the experiment's own decision (one
    experiment only), a dict or a file = that decision, False/None = none. `execution`: how
    the networks run (nas/execution.py).
    """

    def __init__(self, model_folders: str | os.PathLike | Sequence[str | os.PathLike] | LoadedModels,
                 folds: Sequence[str | int] | str | int | None = None, device: str | torch.device | None = "auto",
                 step_size: float = 0.5, tta: bool = True, tile_batch_size: int = 2, checkpoint: str = "final",
                 postprocessing: bool | dict | str | os.PathLike | None = True, progress: bool = True,
                 execution: ExecutionOptions = ExecutionOptions()):
        dev = device if isinstance(device, torch.device) else resolve_device(None if device is None else str(device))
        if isinstance(model_folders, LoadedModels):
            loaded = model_folders
            if not loaded.models:
                raise InputError("no network given")
        else:
            loaded = load_experiments(model_folders, folds, checkpoint, dev, postprocessing)
        if not 0 < step_size <= 1:
            raise InputError(f"step size {step_size} must be in (0, 1]")
        if tile_batch_size < 1:
            raise InputError(f"tile batch size {tile_batch_size} must be at least 1")

        for m in loaded.models:  # a checkpoint's plans may come from someone else: its patch is checked first
            check_prediction_fits(m.checkpoint_file or "network in memory", m.plans.patch_size, m.plans.num_channels,
                                  m.plans.num_classes, tile_batch_size)
        pp = loaded.postprocessing
        if isinstance(pp, (str, os.PathLike)):
            pp = load_postprocessing(pp)
        self.execution = execution.resolved(dev)
        for m in loaded.models:
            prepare_network(m.network, execution)
        self.models = loaded.models
        self.device = dev
        self.step_size = float(step_size)
        self.tta = bool(tta)
        self.tile_batch_size = int(tile_batch_size)
        self.postprocessing: dict | None = pp or None
        self.progress = progress
        self._source = loaded.source

    @classmethod
    def from_networks(cls, networks: Sequence[nn.Module], plans: Any, device: str | torch.device | None = "auto",
                      step_size: float = 0.5, tta: bool = True, tile_batch_size: int = 2,
                      postprocessing: dict | str | os.PathLike | None = None, progress: bool = True,
                      execution: ExecutionOptions = ExecutionOptions()) -> "Predictor":
        """Networks already in memory (the trainer's final validation), all trained under `plans`."""
        models = [FoldModel(str(i), n, plans) for i, n in enumerate(networks)]
        return cls(LoadedModels(models, {"model_folders": [], "folds": [], "checkpoint": "in memory"}, postprocessing),
                   device=device, step_size=step_size, tta=tta, tile_batch_size=tile_batch_size, progress=progress,
                   execution=execution)

    @property
    def plans(self) -> Any:
        """The plans preprocessing and export follow (shared by every model, see the checks)."""
        return self.models[0].plans

    def info(self) -> dict:
        """What a prediction was made with (written as prediction_info.json)."""
        return {**self._source, "tta": self.tta, "step_size": self.step_size, "postprocessing": self.postprocessing,
                "num_models": len(self.models)}

    # ------------------------------------------------------------ one case
    def predict_probabilities(self, data: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Mean over every model of the softmax of its sliding-window logits on a preprocessed
        (C, z, y, x) case: (K, z, y, x) on the CPU. Each model uses its own plans' patch."""
        total: torch.Tensor | None = None
        data = torch.as_tensor(data)
        for m in self.models:
            logits = sliding_window_predict(m.network, data, m.plans.patch_size, m.plans.num_classes,
                                            step_size=self.step_size, gaussian=True,
                                            mirror_axes=(0, 1, 2) if self.tta else None, device=self.device,
                                            tile_batch_size=self.tile_batch_size, execution=self.execution)
            probs = torch.softmax(logits, dim=0)
            total = probs if total is None else total + probs
        assert total is not None
        return total / len(self.models)

    def predict_preprocessed(self, data: np.ndarray, properties: dict, out_file: str | os.PathLike,
                             save_probabilities: bool = False) -> np.ndarray:
        """Predict a preprocessed case and write it in its original geometry; returns the labels."""
        probs = self.predict_probabilities(data).numpy()
        return export_prediction(probs, properties, self.plans, out_file, save_probabilities, self.postprocessing)

    def predict_array(self, image: np.ndarray, spacing: Sequence[float], direction: Sequence[float] | None = None,
                      origin: Sequence[float] | None = None, return_probabilities: bool = False
                      ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Labels (z, y, x) of an image array (C, z, y, x) (or (z, y, x) for one channel).

        `spacing` is in the array's (z, y, x) order; `direction` (9 values) and `origin` are
        SimpleITK (x, y, z) order as `data.image_io.Geometry` holds them (default identity, 0).
        With `return_probabilities`, also the (K, z, y, x) float32 probabilities."""
        image = np.asarray(image, dtype=np.float32)
        if image.ndim == 3:
            image = image[None]
        if image.ndim != 4:
            raise InputError(f"image array must be (C, z, y, x) or (z, y, x), got shape {image.shape}")
        bad = int(image.size - np.count_nonzero(np.isfinite(image)))
        if bad:
            raise InputError(f"image array contains {bad} NaN/inf voxel(s)")
        if len(spacing) != 3:
            raise InputError(f"spacing needs 3 values (z, y, x), got {list(spacing)}")
        geometry = Geometry(spacing=tuple(float(s) for s in reversed(list(spacing))),
                            origin=tuple(origin) if origin is not None else (0.0, 0.0, 0.0),
                            direction=tuple(direction) if direction is not None else IDENTITY_DIRECTION)
        data, _, properties = preprocess_case([Path("image array")], self.plans, case_id="array",
                                              image=(image, geometry))
        full = probabilities_to_original(self.predict_probabilities(data), properties, self.plans)
        seg = labels_from_probabilities(full, self.postprocessing)
        return (seg, full) if return_probabilities else seg

    # --------------------------------------------------------- many cases
    def predict_files(self, inputs: str | os.PathLike | Sequence[Any], output_folder: str | os.PathLike,
                      save_probabilities: bool = False, continue_: bool = False, num_export_workers: int = 1,
                      file_ending: str = ".nii.gz", num_parts: int = 1, part_id: int = 0) -> list[tuple[str, str]]:
        """Predict a folder (MSD 4D files or nnU-Net CASE_0000 files), or a list of cases
        (`data.dataset.Case`, or per case a list of channel files, or one file per case), into
        `output_folder/<case><file_ending>`. Returns [(case_id, one-line error)] of failed cases.
        `num_parts`/`part_id`: this job predicts every num_parts-th case starting at part_id
        (of the cases in name order), so N jobs on a cluster share one folder without overlap."""
        if num_parts < 1 or not 0 <= part_id < num_parts:
            raise InputError(f"--part-id {part_id} must be in 0..{num_parts - 1} (--num-parts {num_parts})")
        cases, input_folder = self._cases(inputs, file_ending)
        cases = sorted(cases, key=lambda c: c.case_id)[part_id::num_parts]
        output_folder = Path(output_folder)
        if input_folder is not None:
            inp, out = input_folder.resolve(), output_folder.resolve()
            if out == inp or inp in out.parents:
                raise InputError(f"{output_folder}: output folder must not be the input folder or inside it")
        output_folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(output_folder / "prediction_info.json",
                          {**self.info(), "input": str(input_folder) if input_folder else [c.case_id for c in cases]})
        todo = [(c, output_folder / f"{c.case_id}{file_ending}") for c in cases]
        if continue_:
            todo = [(c, f) for c, f in todo if not _finished(f, save_probabilities)]
        return self._run(todo, save_probabilities, num_export_workers)

    def _cases(self, inputs: Any, file_ending: str) -> tuple[list, Path | None]:
        if isinstance(inputs, (str, os.PathLike)) and Path(inputs).is_dir():
            return cases_from_folder(Path(inputs), self.plans.num_channels, file_ending,
                                     per_case_problems=True), Path(inputs)
        if isinstance(inputs, (str, os.PathLike)):
            raise InputError(f"{inputs}: input folder not found")
        cases = []
        for item in inputs:
            if isinstance(item, Case):
                cases.append(item)
                continue
            files = [Path(item)] if isinstance(item, (str, os.PathLike)) else [Path(f) for f in item]
            if not files:
                raise InputError("an input case has no image files")
            cases.append(Case(strip_ending(files[0]).removesuffix("_0000"), files, None))
        ids = [c.case_id for c in cases]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise InputError(f"input cases named twice: {', '.join(dupes)}")
        return cases, None

    def _run(self, todo: list[tuple[Any, Path]], save_probabilities: bool,
             num_export_workers: int) -> list[tuple[str, str]]:
        plans, pp = self.plans, self.postprocessing
        failures: list[tuple[str, str]] = []

        def fail(case_id: str, exc: BaseException, what: str = "failed") -> None:
            failures.append((case_id, _one_line(exc)))
            tqdm.write(f"case {case_id}: {what}: {_one_line(exc)}", file=sys.stderr)

        def load(case: Any) -> tuple:  # checked like training input: channels, dimension, NaN/inf
            if not case.problem:
                check_case_header(case.image_files, plans)  # its resampled size, before reading it
            image = read_case_to_predict(case, plans.num_channels)
            return preprocess_case(case.image_files, plans, case_id=case.case_id, image=image)

        pool = ProcessPoolExecutor(max_workers=num_export_workers) if num_export_workers > 1 else None
        pending: list[tuple[str, Future]] = []
        # the next case is read and preprocessed in a thread while the network runs on this one
        loader = ThreadPoolExecutor(max_workers=1)
        next_job = loader.submit(load, todo[0][0]) if todo else None
        try:
            for i, (case, out_file) in enumerate(tqdm(todo, desc="predict", unit="case", disable=not self.progress)):
                job = next_job
                next_job = loader.submit(load, todo[i + 1][0]) if i + 1 < len(todo) else None
                try:
                    data, _, properties = job.result()
                    probs = self.predict_probabilities(data).numpy()
                    del data
                    if pool is None:
                        export_prediction(probs, properties, plans, out_file, save_probabilities, pp)
                        continue
                    pending.append((case.case_id, pool.submit(export_prediction, probs, properties, plans, out_file,
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
