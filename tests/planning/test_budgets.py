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


def _torch_plain_unet(cin, ncls, features, kernels, strides):
    """The layout the price assumes, built from torch modules (conv-norm-ReLU x2, transposed conv up)."""
    import torch.nn as nn

    def block(a, b, k, st):
        pad = [x // 2 for x in k]
        return [nn.Conv3d(a, b, k, st, pad, bias=True), nn.InstanceNorm3d(b, affine=True), nn.ReLU()]

    layers, c = [], cin
    for w, k, st in zip(features, kernels, strides):
        layers += block(c, w, k, st) + block(w, w, k, [1, 1, 1])
        c = w
    for s in range(len(features) - 2, -1, -1):
        layers.append(nn.ConvTranspose3d(features[s + 1], features[s], strides[s + 1], strides[s + 1], bias=True))
        layers += block(2 * features[s], features[s], kernels[s], [1, 1, 1]) + \
            block(features[s], features[s], kernels[s], [1, 1, 1])
    layers += [nn.Conv3d(features[s], ncls, 1, bias=True) for s in range(len(features) - 1)]  # + the ds heads
    return nn.ModuleList(layers)


def test_plain_unet_price_counts_what_torch_builds():
    from c2fnas_auto.planning.budgets import plain_unet_cost

    features, kernels, strides = [4, 8, 16], [[1, 3, 3], [3, 3, 3], [3, 3, 3]], [[1, 1, 1], [1, 2, 2], [2, 2, 2]]
    params, flops = plain_unet_cost(2, 3, [8, 16, 16], features, kernels, strides)
    net = _torch_plain_unet(2, 3, features, kernels, strides)
    assert params == sum(p.numel() for p in net.parameters())
    first = 2 * 2 * 4 * 9 * 8 * 16 * 16  # stage 0's first conv: 2 -> 4 channels, 1x3x3, at every voxel
    assert first < flops < 100 * first
    with pytest.raises(PlansError, match="3 stages needs"):
        plain_unet_cost(2, 3, [8, 16, 16], features, kernels[:2], strides)


def test_plain_unet_price_matches_nnunets_own_network():
    """Where nnU-Net's network package is installed: the price equals its parameter count."""
    unet = pytest.importorskip("dynamic_network_architectures.architectures.unet")
    import torch.nn as nn

    from c2fnas_auto.planning.budgets import nnunet_features, plain_unet_cost

    strides, kernels = nnunet_stages([3.0, 1.0, 1.0], [16, 64, 64])
    features = nnunet_features(len(strides), 0.5)
    net = unet.PlainConvUNet(1, len(strides), features, nn.Conv3d, kernels, strides, 2, 3, 2, conv_bias=True,
                             norm_op=nn.InstanceNorm3d, norm_op_kwargs={"affine": True}, nonlin=nn.LeakyReLU)
    params, _ = plain_unet_cost(1, 3, [16, 64, 64], features, kernels, strides)
    assert params == sum(p.numel() for p in net.parameters())
