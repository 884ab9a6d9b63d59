"""Sizes of the study. `quick` fits 15 minutes and `full` 2 hours on 2 shared CPU cores;
`power` is the study with enough genotypes and seeds to answer (hours of CPU,
resumed across sessions); `tiny` exists for the smoke test. Every profile runs the same code path as a GPU run
(the planner picks patch and batch from a small memory budget and narrow width)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from benchmarks.study.tasks import TaskSpec


@dataclass(frozen=True)
class StudyProfile:
    name: str
    source: TaskSpec
    transfers: tuple[TaskSpec, ...]
    epochs: int
    iters_per_epoch: int
    seeds_source: int
    seeds_transfer: int
    num_random: int
    search: dict[str, Any] = field(default_factory=dict)  # SearchSettings overrides (unknown keys dropped)
    gpu_memory_gb: float = 0.25
    base_channels: int = 8
    n_boot: int = 2000
    random_seed: int = 1  # of the random genotypes
    nnunet_arm: bool = False  # train nnU-Net v2's own network (planned at gpu_memory_gb) as one more arm

    @property
    def tasks(self) -> tuple[TaskSpec, ...]:
        return (self.source, *self.transfers)

    def seeds(self, task_key: str) -> list[int]:
        return list(range(self.seeds_source if task_key == self.source.key else self.seeds_transfer))


def _tasks(src_shape, src_n, mr_shape, mr_n, ct_shape, ct_n) -> tuple[TaskSpec, tuple[TaskSpec, ...]]:
    source = TaskSpec("source", "synthetic", 191, "StudySource", src_n[0], src_n[1], src_shape, (3.0, 1.0, 1.0),
                      "CT", 1, seed=0)
    mr = TaskSpec("mr_aniso", "synthetic", 192, "StudyMRAniso", mr_n[0], mr_n[1], mr_shape, (5.0, 0.8, 0.8),
                  "MR", 2, seed=7)
    ct = TaskSpec("real_ct", "real_ct", 193, "StudyRealCT", ct_n[0], ct_n[1], ct_shape, seed=3)
    return source, (mr, ct)


# the power profile's training budget, chosen by `python -m benchmarks.search_study --power --calibrate`
# (benchmarks/results/search_study/power/budget.json): the smallest tried at which the reference
# reaches held-out lesion Dice >= 0.3 on the source task
POWER_EPOCHS = 10
POWER_ITERS = 40

PROFILES: dict[str, StudyProfile] = {
    "tiny": StudyProfile(
        "tiny", *_tasks((16, 32, 32), (4, 2), (8, 32, 32), (3, 2), (8, 32, 32), (3, 2)),
        epochs=1, iters_per_epoch=2, seeds_source=1, seeds_transfer=1, num_random=1, n_boot=50,
        search=dict(coarse_candidates=2, min_epochs=1, eta=2, rungs=2, clusters=2, population=2, fine_epochs=1,
                    generations=1, iters_per_epoch=2, tournament=1, standalone_sample=0)),
    "quick": StudyProfile(
        "quick", *_tasks((16, 40, 40), (12, 6), (12, 48, 40), (10, 4), (12, 48, 64), (8, 4)),
        epochs=4, iters_per_epoch=10, seeds_source=2, seeds_transfer=1, num_random=3,
        # successive halving: 9 topologies at 1 epoch, the best 3 at 3 (the old flat stage: 3 x 4)
        search=dict(coarse_candidates=9, min_epochs=1, eta=3, rungs=2, clusters=3, population=3, fine_epochs=4,
                    generations=2, iters_per_epoch=10, standalone_sample=3)),
    "full": StudyProfile(
        "full", *_tasks((24, 48, 48), (16, 8), (16, 56, 40), (12, 6), (12, 64, 80), (8, 4)),
        epochs=5, iters_per_epoch=20, seeds_source=3, seeds_transfer=2, num_random=6,
        # successive halving: 12 topologies at 2 epochs, the best 4 at 6 (the old flat stage: 6 x 4);
        # supernet 8 epochs, the first half whole-network paths (supernet_warmup default 0.5)
        search=dict(coarse_candidates=12, min_epochs=2, eta=3, rungs=2, clusters=3, population=4, fine_epochs=8,
                    generations=3, iters_per_epoch=20, standalone_sample=4)),
    # Issue 20 item 5: 19 random genotypes (an exact rank p can reach 1/20 = 0.05), 5 seeds on the
    # source task and 3 per transfer task, nnU-Net's own network as an arm, and a budget at which the
    # reference learns the lesion on the source task (budget.json, `--calibrate`). The search
    # promotes 8 of 24 topologies to its second rung and checks 8 supernet picks stand-alone, so
    # both Kendall taus rest on 8 candidates.
    "power": StudyProfile(
        "power", *_tasks((24, 48, 48), (16, 8), (16, 56, 40), (12, 6), (12, 64, 80), (8, 4)),
        epochs=POWER_EPOCHS, iters_per_epoch=POWER_ITERS, seeds_source=5, seeds_transfer=3, num_random=19,
        nnunet_arm=True,
        search=dict(coarse_candidates=24, min_epochs=2, eta=3, rungs=2, clusters=4, population=8, fine_epochs=8,
                    generations=3, iters_per_epoch=20, standalone_sample=8)),
}
