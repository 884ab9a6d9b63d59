"""Fingerprints of the real TotalSegmentator CT and MR volumes and of a synthetic task."""

from __future__ import annotations

import numpy as np
import pytest

from c2fnas_auto.data.dataset import Case, Dataset
from c2fnas_auto.planning.fingerprint import compute_fingerprint
from c2fnas_auto.planning.planner import plan_experiment


def _dataset(folder, image, label, modality):
    return Dataset(name="Task95_Real", folder=folder, layout="msd", channel_names={0: modality},
                   labels={"background": 0, "organ": 1}, file_ending=".nii.gz",
                   training=[Case("real_000", [folder / image], folder / label)], test=[])


def test_ct_fingerprint_is_sensible(shared_data):
    fp = compute_fingerprint(_dataset(shared_data, "example_ct_sm.nii.gz", "example_seg.nii.gz", "CT"))
    case = fp["cases"][0]
    assert case["spacing"] == pytest.approx([3.0, 3.0, 3.0])
    assert case["shape_before_crop"] == [30, 101, 122]
    assert all(a <= b for a, b in zip(case["shape_after_crop"], case["shape_before_crop"]))
    st = fp["foreground_intensity_statistics"]["0"]
    assert -1100 <= st["min"] <= st["percentile_00_5"] <= st["median"] <= st["percentile_99_5"] <= st["max"] <= 1207
    # labelled organs are soft tissue: the foreground mean lies in the soft-tissue HU range, not in air
    assert -200 < st["mean"] < 300 and 0 < st["std"] < 600
    assert st["num_samples"] == 10000
    assert compute_fingerprint(_dataset(shared_data, "example_ct_sm.nii.gz", "example_seg.nii.gz", "CT")) == fp
    plans = plan_experiment(fp, None, gpu_memory_gb=1.0, base_channels=8)
    norm = plans.normalization[0]
    assert norm["scheme"] == "CT" and norm["lower"] == st["percentile_00_5"] and norm["upper"] == st["percentile_99_5"]
    assert plans.target_spacing == pytest.approx([3.0, 3.0, 3.0])


def test_mr_fingerprint_is_sensible(shared_data):
    fp = compute_fingerprint(_dataset(shared_data, "example_mr_sm.nii.gz", "example_seg_mr.nii.gz", "MR"))
    case = fp["cases"][0]
    assert case["shape_before_crop"] == [20, 91, 117]
    st = fp["foreground_intensity_statistics"]["0"]
    assert -47 <= st["min"] <= st["median"] <= st["max"] <= 833
    assert st["std"] > 0
    plans = plan_experiment(fp, None, gpu_memory_gb=1.0, base_channels=8)
    assert plans.normalization[0]["scheme"] == "zscore"


def test_fingerprint_of_synthetic_task(tiny_task):
    from c2fnas_auto.utils.io import load_json

    fp = load_json(tiny_task.preprocessed_dir / "fingerprint.json")
    assert fp["num_training_cases"] == 8 and len(fp["cases"]) == 8
    assert np.median([c["spacing"][0] for c in fp["cases"]]) == pytest.approx(3.0, rel=0.2)
    assert fp["labels"] == tiny_task.plans.labels
    for c in fp["cases"]:
        assert all(a <= b for a, b in zip(c["shape_after_crop"], c["shape_before_crop"]))
