"""Named budgets: the reference genotype's price and nnU-Net's default network priced at the plans' patch."""

import pytest

from c2fnas_auto.errors import PlansError
from c2fnas_auto.nas.cost import estimate_cost
from c2fnas_auto.nas.genotype import reference_genotype
from c2fnas_auto.planning.budgets import named_budget, nnunet_cost, nnunet_stages
from c2fnas_auto.planning.fingerprint import synthetic_fingerprint
from c2fnas_auto.planning.planner import plan_experiment


def _plans():
    fp = synthetic_fingerprint("Task90_T", {0: "MR"}, {"background": 0, "a": 1, "b": 2},
                               [[1.0, 1.0, 1.0]] * 4, [[40, 56, 40]] * 4)
    return plan_experiment(fp, gpu_memory_gb=0.5, base_channels=8)


def test_nnunet_price_at_a_brats_like_patch():
    """128^3, 4 modalities, 4 outputs: 6 stages, 32..320 wide, about 31 M parameters (nnU-Net's
    published BraTS network is of this size)."""
    strides, kernels = nnunet_stages([1.0, 1.0, 1.0], [128, 128, 128])
    assert len(strides) == 6 and strides[0] == [1, 1, 1] and all(k == [3, 3, 3] for k in kernels)
    params, flops, stages = nnunet_cost(4, 4, [1.0, 1.0, 1.0], [128, 128, 128])
    assert stages == 6 and 30e6 < params < 32e6
    full_res = 2 * (4 * 32 + 32 * 32 + 64 * 32 + 32 * 32) * 27 * 128 ** 3  # stage 0's four 3x3x3 convs
    assert full_res < flops < 2 * full_res * 10


def test_anisotropic_axis_gets_kernel_one_until_it_catches_up():
    strides, kernels = nnunet_stages([4.0, 1.0, 1.0], [16, 128, 128])
    assert kernels[0] == [1, 3, 3] and strides[1] == [1, 2, 2]


def test_named_budgets_from_plans():
    plans = _plans()
    ref = named_budget("reference", plans)
    cost = estimate_cost(reference_genotype(), plans.network_config(), plans.patch_size, batch_size=plans.batch_size)
    assert (ref.params, ref.flops) == (cost.params, cost.flops)
    nn = named_budget("nnunet", plans)
    assert nn.params == nnunet_cost(1, 3, plans.target_spacing, plans.patch_size)[0]
    assert nn.to_dict()["name"] == "nnunet" and "stages" in nn.network
    with pytest.raises(PlansError, match="--budget 'big'"):
        named_budget("big", plans)
