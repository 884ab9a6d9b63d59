"""Expected plans for the ten Medical Segmentation Decathlon tasks, from published statistics.

The median image shape and spacing per task (numpy (z, y, x) order, after cropping
to the nonzero region, as reported in the nnU-Net paper's supplementary material;
channel names and labels from the MSD dataset.json files) are turned into synthetic
fingerprints and planned with the real planner and cost model. No images needed:
`python -m c2fnas_auto.planning.msd_reference [--gpu-memory-gb 8]` prints the
markdown table kept in documentation/reference/plans.md, and the tests plan all ten tasks.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from c2fnas_auto.planning.fingerprint import synthetic_fingerprint
from c2fnas_auto.planning.planner import plan_experiment
from c2fnas_auto.planning.plans import Plans


@dataclass(frozen=True)
class MSDTask:
    name: str
    channels: tuple[str, ...]
    labels: tuple[str, ...]  # foreground labels; background is added
    num_training: int
    median_shape: tuple[int, int, int]
    median_spacing: tuple[float, float, float]


MSD_TASKS: tuple[MSDTask, ...] = (
    MSDTask("Task01_BrainTumour", ("FLAIR", "T1w", "t1gd", "T2w"), ("edema", "non-enhancing tumor", "enhancing tumour"),
            484, (138, 169, 138), (1.0, 1.0, 1.0)),
    MSDTask("Task02_Heart", ("MRI",), ("left atrium",), 20, (115, 320, 232), (1.37, 1.25, 1.25)),
    MSDTask("Task03_Liver", ("CT",), ("liver", "cancer"), 131, (432, 512, 512), (1.0, 0.77, 0.77)),
    MSDTask("Task04_Hippocampus", ("MRI",), ("anterior", "posterior"), 260, (36, 50, 35), (1.0, 1.0, 1.0)),
    MSDTask("Task05_Prostate", ("T2", "ADC"), ("PZ", "TZ"), 32, (20, 320, 319), (3.6, 0.62, 0.62)),
    MSDTask("Task06_Lung", ("CT",), ("cancer",), 63, (252, 512, 512), (1.24, 0.79, 0.79)),
    MSDTask("Task07_Pancreas", ("CT",), ("pancreas", "cancer"), 281, (93, 512, 512), (2.5, 0.8, 0.8)),
    MSDTask("Task08_HepaticVessel", ("CT",), ("vessel", "cancer"), 303, (49, 512, 512), (5.0, 0.8, 0.8)),
    MSDTask("Task09_Spleen", ("CT",), ("spleen",), 41, (90, 512, 512), (5.0, 0.79, 0.79)),
    MSDTask("Task10_Colon", ("CT",), ("colon cancer primaries",), 126, (95, 512, 512), (5.0, 0.78, 0.78)),
)

# Plausible foreground CT statistics (HU) so CT normalization has real numbers to work with.
_CT_STATS = {"mean": 100.0, "std": 50.0, "median": 100.0, "min": -1000.0, "max": 1500.0,
             "percentile_00_5": -50.0, "percentile_99_5": 250.0, "num_samples": 0}


def msd_fingerprint(task: MSDTask) -> dict:
    """A fingerprint with every training case at the task's median shape and spacing."""
    channels = dict(enumerate(task.channels))
    labels = {"background": 0, **{name: i + 1 for i, name in enumerate(task.labels)}}
    intensity = {c: _CT_STATS for c, n in channels.items() if n == "CT"}
    # MR volumes of brains / prostates have a large zero background around the anatomy.
    relative = 0.6 if task.name.startswith(("Task01", "Task05")) else 1.0
    return synthetic_fingerprint(task.name, channels, labels, [list(task.median_spacing)] * task.num_training,
                                 [list(task.median_shape)] * task.num_training, intensity, relative)


def plan_msd(task: MSDTask, gpu_memory_gb: float = 8.0, base_channels: int = 32, cost_fn=None) -> Plans:
    return plan_experiment(msd_fingerprint(task), None, gpu_memory_gb=gpu_memory_gb,
                           base_channels=base_channels, cost_fn=cost_fn)


def markdown_table(gpu_memory_gb: float = 8.0, base_channels: int = 32) -> str:
    """One row per MSD task with the planned spacing, transposition, strides, patch, batch, memory."""
    fmt = lambda v: "x".join(f"{x:g}" for x in v)  # noqa: E731
    rows = ["| task | channels | median shape @ spacing | target spacing | transpose | total downsampling | "
            "patch | batch | est. memory (GB) | nonzero mask |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for task in MSD_TASKS:
        p = plan_msd(task, gpu_memory_gb, base_channels)
        td = p.network.total_downsampling()
        rows.append(f"| {task.name} | {', '.join(task.channels)} | {fmt(task.median_shape)} @ "
                    f"{fmt(task.median_spacing)} | {fmt(p.target_spacing)} | {p.transpose_forward} | {fmt(td)} | "
                    f"{fmt(p.patch_size)} | {p.batch_size} | {p.estimated_memory_gb:.2f} | "
                    f"{'yes' if any(n['use_nonzero_mask'] for n in p.normalization) else 'no'} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpu-memory-gb", type=float, default=8.0)
    ap.add_argument("--base-channels", type=int, default=32)
    args = ap.parse_args(argv)
    print(markdown_table(args.gpu_memory_gb, args.base_channels))


if __name__ == "__main__":
    main()
