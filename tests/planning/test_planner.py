"""Planner: spacing/transposition/stride rules, memory fitting, all ten MSD tasks."""

from __future__ import annotations

import numpy as np
import pytest

from c2fnas_auto.errors import PlansError
from c2fnas_auto.nas.config import NetworkConfig
from c2fnas_auto.nas.cost import estimate_cost
from c2fnas_auto.nas.genotype import Genotype, reference_genotype
from c2fnas_auto.planning.fingerprint import synthetic_fingerprint
from c2fnas_auto.planning.msd_reference import MSD_TASKS, plan_msd
from c2fnas_auto.planning.planner import (GIB, compute_strides, memory_target_note, normalization_for, plan_experiment,
                                          refit_plans, target_spacing_from, transposition_for)

LABELS = {"background": 0, "organ": 1}


def _fp(spacings, shapes, channels=None, relative=1.0):
    return synthetic_fingerprint("Task90_T", channels or {0: "CT"}, LABELS, spacings, shapes,
                                 relative_size_after_crop=relative)


def test_target_spacing_median_and_tenth_percentile():
    iso = np.array([[1.0, 1.0, 1.0], [1.2, 0.9, 0.9], [0.8, 1.1, 1.1]])
    assert target_spacing_from(iso) == pytest.approx([1.0, 1.0, 1.0])
    z = np.linspace(1.5, 6.0, 10)
    aniso = np.stack([z, np.full(10, 0.7), np.full(10, 0.7)], axis=1)
    target = target_spacing_from(aniso)
    assert target[0] == pytest.approx(np.percentile(z, 10))
    assert target[0] < np.median(z)
    assert target[1:] == pytest.approx([0.7, 0.7])
    # the coarse axis never becomes finer than the in-plane axes
    mixed = np.array([[5.0, 0.5, 0.5]] * 9 + [[0.3, 0.5, 0.5]] * 3)
    assert target_spacing_from(mixed)[0] >= 0.5


def test_transposition_puts_coarse_axis_first():
    assert transposition_for([0.8, 0.8, 4.0]) == ([2, 0, 1], [1, 2, 0])
    assert transposition_for([3.0, 1.0, 1.0]) == ([0, 1, 2], [0, 1, 2])
    fp = _fp([[0.8, 0.75, 4.0]] * 5, [[200, 180, 40]] * 5)
    plans = plan_experiment(fp, None, gpu_memory_gb=2.0, base_channels=8)
    assert plans.transpose_forward == [2, 0, 1]
    assert plans.transpose_backward == [1, 2, 0]
    assert plans.target_spacing == pytest.approx([4.0, 0.8, 0.75])
    assert plans.median_shape == [40, 200, 180]
    assert plans.resampling["anisotropic"] is True
    assert plans.network.through_plane_axis == 0
    # the coarse (through-plane) axis waits for the in-plane axes before it is downsampled
    assert plans.strides[0] == [1, 2, 2]
    assert plans.network.total_downsampling()[0] < plans.network.total_downsampling()[1]


def test_strides_rules():
    assert compute_strides([1, 1, 1], [128, 128, 128]) == [[2, 2, 2]] * 4
    # 5 mm vs 0.8 mm: z waits until the in-plane spacing is within 2x
    assert compute_strides([5.0, 0.8, 0.8], [32, 256, 256]) == [[1, 2, 2], [1, 2, 2], [2, 2, 2], [2, 2, 2]]
    # a short axis stops at ~4 voxels
    s = compute_strides([1, 1, 1], [16, 128, 128])
    assert NetworkConfig(1, 2, strides=s).total_downsampling() == (4, 16, 16)


def test_patch_and_batch_respect_budget_and_grow():
    fp = _fp([[2.5, 0.8, 0.8]] * 200, [[93, 512, 512]] * 200)
    sizes = []
    for budget in (1.0, 3.0, 8.0):
        plans = plan_experiment(fp, None, gpu_memory_gb=budget, base_channels=16)
        config = plans.network
        real = estimate_cost(plans.genotype, config, plans.patch_size, batch_size=plans.batch_size)
        assert real.training_bytes <= budget * GIB
        assert plans.estimated_memory_gb == pytest.approx(real.training_bytes / GIB, abs=1e-3)
        assert all(p % d == 0 for p, d in zip(plans.patch_size, config.total_downsampling()))
        assert plans.batch_size >= 2
        sizes.append(int(np.prod(plans.patch_size)) * plans.batch_size)
    assert sizes[0] < sizes[1] < sizes[2]


def test_a_target_mostly_taken_by_the_networks_state_is_named_with_the_patch_it_leaves():
    # the head-to-head's hippocampus: 1 mm MRI of 64^3, where 0.25 GB leaves the default network's
    # patch at 9% of the case (nnU-Net's planner, which does not count parameters, picks 29%)
    fp = synthetic_fingerprint("Task04_Hippocampus", {0: "MRI"}, {"background": 0, "anterior": 1, "posterior": 2},
                               [[1.0, 1.0, 1.0]] * 160, [[64, 64, 64]] * 160)
    small = plan_experiment(fp, None, gpu_memory_gb=0.25, base_channels=32)
    note = memory_target_note(small)
    state = estimate_cost(small.genotype, small.network, small.patch_size, batch_size=2)
    shown = (state.weight_bytes + state.gradient_bytes + state.optimizer_bytes) / GIB
    assert note is not None and f"take {shown:.2f} of the 0.25 GB target" in note
    assert "x".join(map(str, small.patch_size)) in note and "of the median case 64x64x64" in note
    # more room, or a narrower network with the same target: the patch gets the context, no note
    assert memory_target_note(plan_experiment(fp, None, gpu_memory_gb=0.5)) is None
    narrow = plan_experiment(fp, None, gpu_memory_gb=0.25, base_channels=16)
    assert np.prod(narrow.patch_size) > 4 * np.prod(small.patch_size) and memory_target_note(narrow) is None


def test_the_default_width_is_halved_only_where_its_own_state_would_crowd_the_patch_out():
    fp = synthetic_fingerprint("Task04_Hippocampus", {0: "MRI"}, {"background": 0, "anterior": 1, "posterior": 2},
                               [[1.0, 1.0, 1.0]] * 160, [[64, 64, 64]] * 160)
    # 0.25 GB: the paper's width leaves 9% of the case, 16 leaves a patch of 64x64x48
    auto = plan_experiment(fp, None, gpu_memory_gb=0.25)
    assert auto.base_channels == 16 and auto.patch_size == plan_experiment(fp, None, gpu_memory_gb=0.25,
                                                                            base_channels=16).patch_size
    # room enough: the paper's width, as before (nnU-Net's 0.25 GB patch covers 29% and is not crowded)
    assert plan_experiment(fp, None, gpu_memory_gb=0.35).base_channels == 32
    assert plan_experiment(fp, None, gpu_memory_gb=8.0).base_channels == 32
    # a target too small for the paper's width is planned narrower instead of refused ...
    tiny = plan_experiment(fp, None, gpu_memory_gb=0.1)
    assert tiny.base_channels < 32 and tiny.estimated_memory_gb <= 0.1
    with pytest.raises(PlansError, match="too small"):
        plan_experiment(fp, None, gpu_memory_gb=0.1, base_channels=32)
    # ... and one too small for every width names the error of the narrowest
    with pytest.raises(PlansError, match="too small"):
        plan_experiment(fp, None, gpu_memory_gb=0.001)


def test_batch_cap_and_budget_too_small():
    # many tiny images: the batch grows but stays under 5% of the dataset's voxels
    fp = _fp([[1.0, 1.0, 1.0]] * 300, [[36, 50, 35]] * 300, {0: "MRI"})
    plans = plan_experiment(fp, None, gpu_memory_gb=8.0, base_channels=32)
    assert plans.batch_size > 2
    assert plans.batch_size * np.prod(plans.patch_size) <= 0.05 * plans.dataset_voxels
    with pytest.raises(PlansError, match="too small"):
        plan_experiment(fp, None, gpu_memory_gb=0.001, base_channels=32)


def test_base_channels_scale_widths():
    fp = _fp([[1.0, 1.0, 1.0]] * 4, [[64, 64, 64]] * 4)
    narrow = plan_experiment(fp, None, gpu_memory_gb=8.0, base_channels=8)
    assert narrow.network.stem_channels == narrow.base_channels == 8
    assert narrow.network.level_channels == (16, 32, 64, 128)
    wide = plan_experiment(fp, None, gpu_memory_gb=8.0, base_channels=64)
    assert wide.network.level_channels == (128, 256, 512, 512)


def test_cell_style_is_planned_and_fitted_for():
    """The residual wiring costs less memory, so at the same budget it gets a patch at least as large."""
    fp = _fp([[1.0, 1.0, 1.0]] * 4, [[160, 160, 160]] * 4)
    wired = plan_experiment(fp, None, gpu_memory_gb=1.0, base_channels=8)
    residual = plan_experiment(fp, None, gpu_memory_gb=1.0, base_channels=8, cell_style="residual")
    assert wired.network.cell_style == "c2fnas" and residual.network.cell_style == "residual"
    assert np.prod(residual.patch_size) * residual.batch_size >= np.prod(wired.patch_size) * wired.batch_size
    assert residual.estimated_memory_gb <= 1.0
    with pytest.raises(PlansError, match="cell style 'dense'"):
        plan_experiment(fp, None, gpu_memory_gb=1.0, base_channels=8, cell_style="dense")


def test_normalization_schemes_from_fingerprint():
    fp = _fp([[1, 1, 1]], [[10, 10, 10]], {0: "CT", 1: "T2"}, relative=0.6)
    fp["foreground_intensity_statistics"]["0"] = {"mean": 40.0, "std": 20.0, "percentile_00_5": -100.0,
                                                  "percentile_99_5": 200.0}
    ct, mr = normalization_for(fp)
    assert ct == {"scheme": "CT", "use_nonzero_mask": False, "mean": 40.0, "std": 20.0, "lower": -100.0,
                  "upper": 200.0}
    assert mr == {"scheme": "zscore", "use_nonzero_mask": True}
    fp["median_relative_size_after_crop"] = 0.9
    assert normalization_for(fp)[1]["use_nonzero_mask"] is False


def test_refit_plans_with_other_genotype():
    fp = _fp([[2.5, 0.8, 0.8]] * 50, [[93, 512, 512]] * 50)
    plans = plan_experiment(fp, None, gpu_memory_gb=2.0, base_channels=16)
    other = Genotype(levels=[1, 2, 3, 4, 4, 4, 3, 2, 1, 1, 1, 1], ops=["3d"] * 12)
    refit = refit_plans(plans, other, gpu_memory_gb=4.0)
    assert refit.genotype.levels == other.levels and plans.genotype.levels == reference_genotype().levels
    assert refit.target_spacing == plans.target_spacing and refit.normalization == plans.normalization
    assert refit.gpu_memory_gb == 4.0 and refit.estimated_memory_gb <= 4.0
    cost = estimate_cost(other, refit.network_config(), refit.patch_size, batch_size=refit.batch_size)
    assert cost.training_bytes <= 4.0 * GIB
    assert np.prod(refit.patch_size) * refit.batch_size >= np.prod(plans.patch_size) * plans.batch_size


@pytest.mark.parametrize("task", MSD_TASKS, ids=[t.name for t in MSD_TASKS])
def test_all_ten_msd_tasks_plan(task):
    plans = plan_msd(task, gpu_memory_gb=8.0)
    config = plans.network_config()
    assert plans.estimated_memory_gb <= 8.0
    assert estimate_cost(plans.genotype, config, plans.patch_size, plans.batch_size).training_bytes <= 8 * GIB
    assert all(p % d == 0 for p, d in zip(plans.patch_size, config.total_downsampling()))
    assert plans.batch_size >= 2
    assert plans.num_channels == len(task.channels)
    assert plans.transpose_forward[0] == int(np.argmax(task.median_spacing))
    anisotropic = max(task.median_spacing) / min(task.median_spacing) > 3
    assert plans.resampling["anisotropic"] == anisotropic
    if anisotropic:
        assert plans.strides[0][0] == 1
    # every patch covers a sizeable part of the median image (not collapsed to a sliver); 24, not 32:
    # the c2fnas cell style's full-resolution head leaves HepaticVessel 24 of its 49 slices at 8 GB
    assert all(p >= min(24, m) for p, m in zip(plans.patch_size, plans.median_shape))
    assert plans.normalization[0]["scheme"] == ("CT" if task.channels == ("CT",) else "zscore")
