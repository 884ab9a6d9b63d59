"""The start study: which change makes every short training of the default
`c2fnas` network start learning, and at what cost in Dice when it would have started anyway.

Each job trains one network variant of one genotype with one init seed (the weights'
generator) and one data seed (patches, augmentation) on the search study's source task
with the project's own `fit`, and scores it with `score_cases` on the held-out cases.
Variants are applied to the built network (module surgery) or through `fit`'s options,
so the package's default is only changed once the measurement has chosen.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from benchmarks.study.arms import random_genotypes
from benchmarks.study.profiles import PROFILES, StudyProfile

NON_START_DICE = 0.05  # held-out foreground Dice below this: the training never started
LEAKY_SLOPE = 1e-2     # nnU-Net's LeakyReLU slope and He-init negative slope
HEAD_MODULES = ("head_fuse", "head_expand", "head_classifier")
FULL_STUDY = Path(__file__).resolve().parents[1] / "results" / "search_study" / "full"


# ---------------------------------------------------------------- network surgery

def _leaky(module) -> None:
    """Every ReLU below `module` -> LeakyReLU(0.01), in place."""
    from torch import nn

    for block in module.modules():
        if isinstance(getattr(block, "relu", None), nn.ReLU):
            block.relu = nn.LeakyReLU(LEAKY_SLOPE)


def _he(modules) -> None:
    """Kaiming-normal conv weights (a = 0.01, fan_in) and zero conv biases, as nnU-Net initialises."""
    from torch import nn

    for m in modules:
        if isinstance(m, nn.Conv3d):
            nn.init.kaiming_normal_(m.weight, a=LEAKY_SLOPE)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _classifier_bias(net) -> None:
    """Give the classifier conv a (zero) bias; its weights stay as initialised."""
    import torch
    from torch import nn

    old = net.head_classifier.conv
    new = nn.Conv3d(old.in_channels, old.out_channels, old.kernel_size, stride=old.stride,
                    padding=old.padding, bias=True)
    with torch.no_grad():
        new.weight.copy_(old.weight)
        new.bias.zero_()
    net.head_classifier.conv = new


def _norm_free_convs(net):
    """Convs with no norm after them (1x1x1 pre/post/second units of the wiring, classifier)."""
    from c2fnas_auto.nas.ops import ConvBlock

    return [b.conv for b in net.modules() if isinstance(b, ConvBlock) and b.norm is None]


def head_bias_leaky(net) -> None:
    _classifier_bias(net)
    for name in HEAD_MODULES:
        _leaky(getattr(net, name))


def linear_classifier(net) -> None:
    """No ReLU before the classifier (it reads the last instance norm's output) and a bias:
    a voxel can no longer have an all-zero classifier input."""
    _classifier_bias(net)
    net.head_classifier.relu = None


@dataclass(frozen=True)
class Variant:
    """A change to today's training: network surgery, config overrides and `fit` options."""

    name: str
    describe: str
    surgery: Callable[[Any], None] | None = None
    config: dict[str, Any] = field(default_factory=dict)
    fit: dict[str, Any] = field(default_factory=dict)


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("today", "the default network and training as on main"),
    Variant("head_bias_leaky", "classifier bias + LeakyReLU(0.01) in the head (fuse, expand, classifier)",
            head_bias_leaky),
    Variant("leaky_all", "LeakyReLU(0.01) in place of every ReLU", _leaky),
    Variant("he_init", "He (kaiming normal, a=0.01) init of every conv, zero biases",
            lambda net: _he(net.modules())),
    Variant("he_leaky", "He init + LeakyReLU everywhere", lambda net: (_he(net.modules()), _leaky(net))),
    Variant("deep_supervision", "deep supervision on (planner default is off)", config={"deep_supervision": True}),
    Variant("warmup", "learning rate and momentum ramped over the first 20 iterations", fit={"warmup_iterations": 20}),
    Variant("he_norm_free", "He init only of the convs with no norm after them",
            lambda net: _he(_norm_free_convs(net))),
    Variant("linear_classifier", "classifier reads the last norm directly (no ReLU) and has a bias",
            linear_classifier),
)}


# ---------------------------------------------------------------- genotypes and jobs

def study_genotypes() -> dict[str, Any]:
    """The reference; the searched winner of the full search study and its all-3d twin (both
    failed there with one seed); random_5 of that study (failed with seed 0) and random_0."""
    from c2fnas_auto.nas.genotype import Genotype, reference_genotype

    searched = Genotype.load(FULL_STUDY / "searched_genotype.json")
    randoms = random_genotypes(6, PROFILES["full"].random_seed)
    return {"reference": reference_genotype(), "searched": searched,
            "searched_3d": searched.with_ops(["3d"] * len(searched.levels)),
            "random_5": randoms[5], "random_0": randoms[0]}


@dataclass(frozen=True)
class Job:
    variant: str
    genotype: str
    init_seed: int
    data_seed: int
    width: int

    @property
    def key(self) -> str:
        return f"{self.variant}|{self.genotype}|w{self.width}|i{self.init_seed}|d{self.data_seed}"


def train_job(task, job: Job, genotype, profile: StudyProfile, epochs: int | None = None) -> dict[str, Any]:
    """Build, modify, train and score one job; every number a summary needs."""
    import torch

    from benchmarks.study.runner import class_dice
    from c2fnas_auto.nas.network import build_network
    from c2fnas_auto.training.api import fit, score_cases
    from c2fnas_auto.training.start_check import StartMonitor, dead_head_fraction_at

    variant = VARIANTS[job.variant]
    base = task.plans.network_config()
    widths = tuple(job.width * 2 ** i for i in range(len(base.level_channels)))
    # "today" is the public head whatever the package default is now (it changed after this study)
    overrides = {"classifier": "relu", **variant.config}
    config = dataclasses.replace(base, stem_channels=job.width, level_channels=widths, **overrides)
    torch.manual_seed(job.init_seed)
    net = build_network(genotype, config)
    if variant.surgery is not None:
        variant.surgery(net)
    dead_init = dead_head_fraction_at(net, _probe_input(task))
    monitor = StartMonitor()
    t0, c0 = time.perf_counter(), time.process_time()
    losses = fit(net, task.plans, task.preprocessed, task.train_ids, epochs=epochs or profile.epochs,
                 iters_per_epoch=profile.iters_per_epoch, device="cpu", seed=job.data_seed, monitor=monitor,
                 **variant.fit)
    scores = score_cases(net, task.plans, task.heldout_dir, task.heldout_ids, device="cpu")
    return {"mean_fg_dice": scores["mean_fg_dice"],
            "class_dice": class_dice(scores["per_case"], task.plans.num_classes), "per_case": scores["per_case"],
            "final_loss": float(losses[-1]) if losses else None, "losses": [float(x) for x in losses],
            "epochs": monitor.history, "not_started_by_monitor": monitor.not_started(final=True),
            "dead_head_init": dead_init, "dead_head_end": monitor.history[-1]["dead_head_fraction"],
            "non_start": scores["mean_fg_dice"] < NON_START_DICE,
            "params": int(sum(p.numel() for p in net.parameters())),
            "cpu_seconds": round(time.process_time() - c0, 1), "wall_seconds": round(time.perf_counter() - t0, 1),
            "loadavg_1min": round(os.getloadavg()[0], 2)}


def _probe_input(task):
    """One training case's centre patch (no random numbers drawn: the init seed's stream stays as fit expects)."""
    import torch

    from c2fnas_auto.preprocessing.storage import load_case

    data, _, _ = load_case(task.preprocessed, task.train_ids[0], mmap=False)
    patch = list(task.plans.patch_size)
    sl = [slice(max(0, (n - p) // 2), max(0, (n - p) // 2) + p) for n, p in zip(data.shape[1:], patch)]
    x = np.zeros([data.shape[0]] + patch, dtype=np.float32)
    crop = data[(slice(None), *sl)]
    x[(slice(None), *[slice(0, s) for s in crop.shape[1:]])] = crop
    return torch.from_numpy(x[None])
