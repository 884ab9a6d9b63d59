"""The nnU-Net-style training run of one fold: loop, checkpoints, logs, resume, final validation.

Results go to `C2FNAS_results/<task>/<plans_name>__<genotype id>/fold_<k>/`: one folder per
experiment, so training another genotype (`--genotype`) never touches the plans genotype's folds. Under torchrun
every rank trains on its share of the global batch with its own data seed; rank 0 alone writes files
and runs the final validation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from c2fnas_auto import paths
from c2fnas_auto.errors import C2FNASError, InputError
from c2fnas_auto.inference.experiments import experiment_dir
from c2fnas_auto.nas.checkpoint import BEST, FINAL, LATEST, load_checkpoint, save_checkpoint
from c2fnas_auto.nas.cost import estimate_cost
from c2fnas_auto.nas.execution import ExecutionOptions, check_channels_last, flat_asdict, prepare_network
from c2fnas_auto.nas.genotype import Genotype
from c2fnas_auto.paths import PLANS_FILE
from c2fnas_auto.planning.plans import Plans
from c2fnas_auto.planning.size_check import check_training_fits
from c2fnas_auto.preprocessing.provenance import check_arrays_match_plans
from c2fnas_auto.training.augmentation import AugmentationParams, initial_patch_size, use_2d_augmentation
from c2fnas_auto.training.dataloader import (
    FOREGROUND_CLASS_RULES,
    check_augmentation,
    default_augmentation,
    load_cases,
    make_batch_iterator,
)
from c2fnas_auto.training.logger import TrainingLog
from c2fnas_auto.training.loop import EpochStats, StepContext, per_class_pseudo_dice, run_epoch, run_validation
from c2fnas_auto.training.loss import DeepSupervisionLoss
from c2fnas_auto.training.schedule import build_optimizer, poly_lr, set_lr
from c2fnas_auto.training.signals import TrainingStopped, stop_checked
from c2fnas_auto.training.splits import fold_case_ids
from c2fnas_auto.training.start_check import StartMonitor
from c2fnas_auto.utils.device import resolve_device
from c2fnas_auto.utils.distributed import DistContext, init_distributed, split_batch
from c2fnas_auto.utils.io import remove_stale_temporaries
from c2fnas_auto.utils.stop_signals import StopFlag


def default_num_workers() -> int:
    """Augmentation workers: one per spare CPU core, at most 8."""
    return max(1, min(8, (os.cpu_count() or 2) - 1))


@dataclass
class TrainerOptions:
    epochs: int = 1000
    iters_per_epoch: int = 250
    val_iters: int = 50
    batch_size: int | None = None
    patch_size: tuple[int, ...] | None = None
    device: str | None = None
    num_workers: int = 0
    seed: int = 0
    checkpoint_every: int = 5
    final_validation: bool = True
    save_probabilities: bool = False  # keep the final validation's softmax (<case>.npz) for ensembles
    continue_training: bool = False
    genotype_file: str | None = None
    progress: bool = True
    augment: bool = True
    augmentation: str | None = None  # backend; None = default_augmentation(device), resolved by the Trainer
    foreground_classes: str = "uniform"  # class rule of forced-foreground samples (dataloader)
    deep_supervision: bool | None = None  # None: the plans' network.deep_supervision
    execution: ExecutionOptions = ExecutionOptions()  # precision, compile, layout (nas/execution.py)

    def to_dict(self) -> dict:
        """Flat, as checkpoints store the options (the execution options under their own names)."""
        return flat_asdict(self)

    def check(self) -> None:
        for name in ("epochs", "iters_per_epoch", "val_iters", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(self, name)})")
        if self.batch_size is not None and self.batch_size < 1:
            raise InputError(f"--batch-size must be at least 1 (got {self.batch_size})")
        if self.patch_size is not None and (len(self.patch_size) != 3 or min(self.patch_size) < 1):
            raise InputError(f"--patch-size needs three positive sizes Z Y X (got {list(self.patch_size)})")
        if self.num_workers < 0:
            raise InputError(f"--num-workers must not be negative (got {self.num_workers})")
        if self.augmentation is not None:
            check_augmentation(self.augmentation)
        if self.foreground_classes not in FOREGROUND_CLASS_RULES:
            raise InputError(f"--foreground-classes must be one of {', '.join(FOREGROUND_CLASS_RULES)} "
                             f"(got {self.foreground_classes!r})")


def resolve_task_name(task: str | int) -> str:
    """Task id or folder name -> folder name: the raw task folder's, else the preprocessed one's.

    The preprocessed fallback lets a machine that holds only preprocessed data train
    (with --no-final-validation, which needs the raw labels)."""
    try:
        return paths.task_name_from_id(task)
    except C2FNASError as raw_error:
        try:
            return paths.resolve_task(task, paths.preprocessed_root()).name
        except C2FNASError:
            raise raw_error from None


class Trainer:
    """Train one fold. `setup()` builds everything (and resumes); `run()` trains and validates."""

    def __init__(self, task: str | int, fold: int | str, options: TrainerOptions | None = None):
        self.options = options or TrainerOptions()
        self.options.check()
        self.fold = fold if str(fold) == "all" else int(fold)
        self.task_name = resolve_task_name(task)
        self.preprocessed_dir = paths.preprocessed_dir(self.task_name)
        plans_file = self.preprocessed_dir / PLANS_FILE
        self.plans = Plans.load(plans_file)
        self.genotype = self._genotype(plans_file)
        self.experiment_dir = experiment_dir(self.task_name, self.plans.plans_name, self.genotype)
        self.fold_dir = self.experiment_dir / f"fold_{self.fold}"
        self.patch_size = tuple(int(p) for p in (self.options.patch_size or self.plans.patch_size))
        self.network_config = self.plans.network_config()
        if self.options.deep_supervision is not None:  # extra heads change the network: recorded in run_plans
            self.network_config = replace(self.network_config, deep_supervision=self.options.deep_supervision)
        self.network_config.check_patch(self.patch_size)
        self.device = resolve_device(self.options.device)
        check_training_fits(plans_file, self.genotype, self.network_config, self.patch_size,  # before any allocation
                            int(self.options.batch_size or self.plans.batch_size), self.plans.num_channels,
                            self.device, ranks=int(os.environ.get("WORLD_SIZE", "1")))
        if self.options.genotype_file:
            self._check_memory()
        # the plans as trained: overrides applied, stored in checkpoints and used for validation
        self.run_plans = self.plans.copy()
        self.run_plans.genotype = self.genotype
        self.run_plans.patch_size = list(self.patch_size)
        self.run_plans.network = self.network_config
        # resolved here so checkpoints and the log record the backend actually used
        self.augmentation_default = self.options.augmentation is None
        # a copy: the caller's options object stays as given (it may start several trainers)
        self.options = replace(self.options,
                               augmentation=self.options.augmentation or default_augmentation(self.device))
        self.dist = DistContext()
        self.start_epoch = 0
        self.log = TrainingLog()
        self._ready = False

    def _genotype(self, plans_file: Path):
        if self.options.genotype_file:
            return Genotype.load(self.options.genotype_file).validate()
        if self.plans.genotype is None:
            raise InputError(f"{plans_file}: the plans hold no genotype; run c2fnas_search or pass --genotype FILE")
        return self.plans.genotype

    def _check_memory(self) -> None:
        """The plans fitted patch and batch to their memory budget for the plans genotype; another
        genotype may need more. Over budget: stop on a GPU (it would run out of memory), warn on CPU."""
        batch = int(self.options.batch_size or self.plans.batch_size)
        cost = estimate_cost(self.genotype, self.network_config, list(self.patch_size), batch_size=batch,
                             amp=self.device.type == "cuda")
        need, budget = cost.training_bytes / 2 ** 30, float(self.plans.gpu_memory_gb)
        if need <= budget:
            return
        text = (f"genotype {self.options.genotype_file}: estimated training memory {need:.2f} GiB at patch "
                f"{list(self.patch_size)}, batch {batch} exceeds the plans' budget of {budget:g} GiB; pass a smaller "
                "--patch-size or --batch-size, or replan with it (c2fnas_plan_and_preprocess -t TASK "
                "--genotype FILE) so patch and batch are fitted to it")
        if self.device.type == "cuda":
            raise InputError(text)
        print(f"warning: {text} (training on {self.device}, going on)", flush=True)

    # ------------------------------------------------------------------ setup
    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    def say(self, text: str, echo: bool = True) -> None:
        line = self.log.message(text)
        if echo and self.is_main:
            print(line, flush=True)

    def setup(self) -> None:
        # start-up: nas.network loads torch._dynamo (seconds); c2fnas_train --help imports this module
        from c2fnas_auto.nas.network import build_network

        self.dist = init_distributed(self.device.type)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        torch.manual_seed(self.options.seed)
        np.random.seed(self.options.seed)
        self.train_ids, self.val_ids = fold_case_ids(self.preprocessed_dir, self.fold)
        check_arrays_match_plans(self.preprocessed_dir, self.plans, self.task_name, [*self.train_ids, *self.val_ids])
        self.network: nn.Module = build_network(self.genotype, self.network_config).to(self.device)
        self.optimizer = build_optimizer(self.network)
        prepare_network(self.network, self.options.execution)
        self.ctx = StepContext(self.network, self.optimizer, DeepSupervisionLoss(), self.device,
                               execution=self.options.execution)
        if self.is_main:
            self.fold_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(self.fold_dir)
        if self.options.continue_training:
            self._resume()
        if self.dist.enabled:
            self.ctx.network = nn.parallel.DistributedDataParallel(
                self.network, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.batch_size = int(self.options.batch_size or self.plans.batch_size)
        self.rank_batch, self.rank_offset = split_batch(self.batch_size, self.dist)
        self._ready = True

    def _resume(self) -> None:
        latest = self.fold_dir / LATEST
        if not latest.is_file():
            self.say(f"--continue: no {latest.name} in {self.fold_dir}; starting from scratch")
            return
        ckpt = load_checkpoint(latest, map_location=self.device)
        saved = ckpt.get("genotype") or {}
        if (saved.get("levels"), saved.get("ops")) != (list(self.genotype.levels), list(self.genotype.ops)):
            raise InputError(f"{latest}: was trained with a different genotype than the one requested now "
                             f"(start without --continue to retrain)")
        try:
            self.network.load_state_dict(ckpt["network_weights"])
        except RuntimeError as exc:
            raise InputError(f"{latest}: weights do not fit the network of the current plans "
                             f"({str(exc).splitlines()[0]})") from None
        self.optimizer.load_state_dict(ckpt["optimizer_state"])
        if ckpt.get("grad_scaler_state") and self.ctx.amp:  # empty when saved without AMP (CPU)
            self.ctx.scaler.load_state_dict(ckpt["grad_scaler_state"])
        self.log = TrainingLog.from_state_dict(ckpt["logging"])
        self.start_epoch = int(ckpt["epoch"])
        set_lr(self.optimizer, poly_lr(self.start_epoch, self.options.epochs))
        self.say(f"--continue: resumed from {latest.name} at epoch {self.start_epoch}")

    # ------------------------------------------------------------ checkpoints
    def save(self, name: str, epoch: int) -> None:
        if not self.is_main:
            return
        plans = self.run_plans.to_dict()
        save_checkpoint(self.fold_dir / name, network_state=self.network.state_dict(),
                        optimizer_state=self.optimizer.state_dict(), scaler_state=self.ctx.scaler.state_dict(),
                        epoch=epoch, log_state=self.log.state_dict(), plans=plans,
                        genotype=self.genotype.to_dict(), network_config=self.network_config.to_dict(),
                        extra={"trainer_options": self.options.to_dict(), "fold": self.fold})

    # ------------------------------------------------------------------- run
    def _describe(self) -> None:
        aug = AugmentationParams()
        self.say(f"task {self.task_name}, fold {self.fold}: {len(self.train_ids)} training / "
                 f"{len(self.val_ids)} validation cases")
        self.say(f"genotype levels {self.genotype.topology_string()} ops {self.genotype.ops_string()}")
        backend = self.options.augmentation
        region = ("region cut per batch from the drawn transform" if backend == "device" else
                  f"initial patch {list(initial_patch_size(self.patch_size, aug))}")
        self.say(f"patch {list(self.patch_size)}, batch {self.batch_size} ({self.rank_batch} per rank x "
                 f"{self.dist.world_size}), augmentation {backend}"
                 f"{' (default on ' + self.device.type + ')' if self.augmentation_default else ''}, {region}, "
                 f"{'2D-style' if use_2d_augmentation(self.patch_size) else '3D'} spatial augmentation, "
                 f"deep supervision {'on' if self.network_config.deep_supervision else 'off'}")
        execution = self.options.execution
        self.say(f"device {self.device}, precision {self.ctx.precision}"
                 f"{', compiled' if execution.compile else ''}"
                 f"{', channels-last' if check_channels_last(execution.channels_last, self.device) else ''}, "
                 f"{self.options.epochs} epochs x "
                 f"{self.options.iters_per_epoch} iterations, seed {self.options.seed}")

    def _reduce(self, stats: EpochStats) -> EpochStats:
        k = len(stats.tp)
        vals = self.dist.all_reduce_sum([stats.loss] + list(stats.tp) + list(stats.fp) + list(stats.fn))
        return EpochStats(vals[0] / self.dist.world_size, np.array(vals[1:1 + k]), np.array(vals[1 + k:1 + 2 * k]),
                          np.array(vals[1 + 2 * k:]), stats.seconds, stats.iterations,
                          dead_head_fraction=stats.dead_head_fraction)  # this rank's: a signal, not a sum

    def run(self) -> dict:
        """Train the remaining epochs, write final outputs; returns the final validation summary (or {})."""
        if not self._ready:
            self.setup()
        opts = self.options
        try:
            self._describe()
            data_seed = opts.seed + 7919 * self.start_epoch
            train_cases = load_cases(self.preprocessed_dir, self.train_ids)
            val_cases = load_cases(self.preprocessed_dir, self.val_ids)
            share = dict(global_batch=self.batch_size, offset=self.rank_offset, rank=self.dist.rank,
                         augmentation=opts.augmentation, device=self.device)
            train_batches = make_batch_iterator(train_cases, self.patch_size, self.rank_batch, seed=data_seed,
                                                num_workers=opts.num_workers, augment=opts.augment,
                                                foreground_classes=opts.foreground_classes, **share)
            val_batches = make_batch_iterator(val_cases, self.patch_size, self.rank_batch, seed=data_seed + 1,
                                              num_workers=0, augment=False, **share)
            if self.start_epoch < opts.epochs and self.is_main:
                self._clear_validation()
            stop = StopFlag().install()
            train_batches = stop_checked(train_batches, stop, self.dist, self.device)
            try:
                for epoch in range(self.start_epoch, opts.epochs):
                    self._epoch(epoch, train_batches, val_batches)
            except TrainingStopped as exc:
                self._stopped(epoch, exc)
            finally:
                stop.restore()
            if self.start_epoch >= opts.epochs:
                self.say(f"training already finished ({self.start_epoch} epochs)")
            self.save(FINAL, opts.epochs)
            self.save(LATEST, opts.epochs)
            summary = {}
            if opts.final_validation and self.is_main:
                summary = self._final_validation()
            if self.is_main:
                self.log.write(self.fold_dir)
            self.dist.barrier()
            return summary
        finally:
            self.dist.close()

    def _epoch(self, epoch: int, train_batches, val_batches) -> None:
        opts = self.options
        lr = poly_lr(epoch, opts.epochs)
        set_lr(self.optimizer, lr)
        train = self._reduce(run_epoch(self.ctx, train_batches, opts.iters_per_epoch,
                                       progress=opts.progress and self.is_main, desc=f"epoch {epoch + 1}"))
        val = self._reduce(run_validation(self.ctx, val_batches, opts.val_iters))
        rec = self.log.add_epoch({
            "epoch": epoch + 1, "lr": lr, "train_loss": train.loss, "val_loss": val.loss,
            "train_pseudo_dice": train.pseudo_dice, "val_pseudo_dice": val.pseudo_dice,
            "val_pseudo_dice_per_class": per_class_pseudo_dice(val.tp, val.fp, val.fn),
            "epoch_seconds": train.seconds + val.seconds, "seconds_per_iteration": train.seconds_per_iteration,
            "train_foreground_tp": float(np.sum(train.tp)), "dead_head_fraction": train.dead_head_fraction})
        self._check_started(rec)
        self.say(f"epoch {epoch + 1}/{opts.epochs}: train loss {rec['train_loss']:.4f}, val loss "
                 f"{rec['val_loss']:.4f}, pseudo Dice {rec['val_pseudo_dice']:.4f} (EMA "
                 f"{rec['ema_pseudo_dice']:.4f}), lr {lr:.2e}, {rec['epoch_seconds']:.1f} s "
                 f"({rec['seconds_per_iteration']:.3f} s/it)")
        if self.log.improved():
            self.say(f"new best EMA pseudo Dice {self.log.best_ema:.4f}: writing {BEST}", echo=False)
            self.save(BEST, epoch + 1)
        if (epoch + 1) % opts.checkpoint_every == 0 and epoch + 1 < opts.epochs:
            self.save(LATEST, epoch + 1)
        if self.is_main:
            self.log.write(self.fold_dir)

    def _check_started(self, rec: dict) -> None:
        """Judge the start signals over the whole history (so a resumed run judges the same),
        mark the epoch, and warn once each time the verdict turns to 'not started'."""
        monitor = StartMonitor()
        for e in self.log.epochs:
            monitor.update(e["train_loss"], e.get("train_foreground_tp", 1.0),
                           e.get("dead_head_fraction", float("nan")))
        rec["not_started"] = monitor.not_started()
        before = self.log.epochs[-2].get("not_started", False) if len(self.log.epochs) > 1 else False
        if rec["not_started"] and not before:
            self.say(monitor.warning())

    def _stopped(self, epoch: int, exc: TrainingStopped) -> None:
        """A stop signal mid-epoch: keep the weights so far in checkpoint_latest (the epoch is
        run again from its start on --continue) and hand the stop on to the caller."""
        self.save(LATEST, epoch)
        self.say(f"{exc.signal_name} received: stopped during epoch {epoch + 1}, wrote {LATEST}; "
                 f"resume with --continue")
        if self.is_main:
            self.log.write(self.fold_dir)
        raise exc

    def _clear_validation(self) -> None:
        """Exports of an earlier run would be reused by the resumable validation: drop them once
        the weights change."""
        folder = self.fold_dir / "validation"
        if folder.is_dir():
            for p in folder.iterdir():
                if p.is_file():
                    p.unlink()

    def _final_validation(self) -> dict:
        # start-up: validation loads the predictor and evaluation stack; c2fnas_train --help imports this module
        from c2fnas_auto.training.validation import final_validation, reference_label_folder

        ref = reference_label_folder(paths.resolve_task(self.task_name), self.val_ids)
        self.say(f"final validation of {len(self.val_ids)} cases -> {self.fold_dir / 'validation'}")
        summary = final_validation(self.network, self.run_plans, self.preprocessed_dir, ref, self.val_ids,
                                   self.fold_dir / "validation", self.device, progress=self.options.progress,
                                   save_probabilities=self.options.save_probabilities)
        fg = summary.get("foreground_mean", {})
        self.say(f"final validation: foreground mean Dice {fg.get('Dice')}, NSD {fg.get('NSD')} "
                 f"({self.fold_dir / 'validation' / 'summary.json'})")
        self._decide_postprocessing(ref)
        return summary

    def _decide_postprocessing(self, ref: Path) -> None:
        """Per-fold postprocessing decision, so predicting with this fold alone applies it;
        `c2fnas_evaluate --determine-postprocessing` decides over all folds once they exist."""
        # start-up: postprocessing loads scipy.ndimage; c2fnas_train --help imports this module
        from c2fnas_auto.inference.postprocessing import determine_postprocessing

        decision = determine_postprocessing(self.fold_dir.parent, ref, self.run_plans.labels,
                                            folds=[self.fold_dir.name[len("fold_"):]],
                                            out_file=self.fold_dir / "postprocessing.json",
                                            progress=self.options.progress)
        self.say(f"postprocessing: keep the largest component for labels {decision['largest_component_labels']} "
                 f"(Dice before {decision['dice_before']}, after {decision['dice_after']}); remove components "
                 f"smaller than {decision['min_component_size'] or 'nothing'} voxels "
                 f"(tried {decision['min_size_candidates'] or 'none'})")
