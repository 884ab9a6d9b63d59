import random

import pytest
import torch

from c2fnas_auto.nas.config import CELL_STYLES, NetworkConfig
from c2fnas_auto.nas.cost import estimate_cost, estimate_supernet_cost
from c2fnas_auto.nas.genotype import OPS, Genotype, reference_genotype
from c2fnas_auto.nas.measure import saved_activation_bytes
from c2fnas_auto.nas.network import build_network, count_parameters
from c2fnas_auto.nas.supernet import build_supernet

ANISO = ((1, 2, 2), (2, 2, 2), (1, 2, 2), (2, 2, 2))
CASES = [
    (reference_genotype(), ((2, 2, 2),) * 4, (32, 32, 32), 1, False),
    (reference_genotype(), ANISO, (8, 32, 48), 2, True),
    (Genotype([2, 3, 4, 4, 3, 3, 2, 2, 1, 1, 1, 1], ["3d", "p3d", "2d"] * 4), ((2, 2, 2),) * 4, (32, 48, 32), 2, True),
    (Genotype([1] * 12, ["p3d"] * 12), ANISO, (4, 16, 32), 3, False),
]


def config(strides, ds, style="c2fnas"):
    return NetworkConfig(2, 3, stem_channels=4, level_channels=(4, 8, 8, 16), strides=strides, deep_supervision=ds,
                         cell_style=style)


@pytest.mark.parametrize("style", CELL_STYLES)
@pytest.mark.parametrize("g, strides, patch, batch, ds", CASES)
def test_saved_activations_match_autograd_hooks(g, strides, patch, batch, ds, style):
    """fp32: the estimate is exact, byte for byte."""
    torch.manual_seed(0)
    c = config(strides, ds, style)
    net = build_network(g, c)
    measured = saved_activation_bytes(net, torch.randn(batch, 2, *patch))
    est = estimate_cost(g, c, patch, batch_size=batch, amp=False)
    assert est.activation_bytes == measured
    assert est.params == count_parameters(net)


@pytest.mark.parametrize("style", CELL_STYLES)
def test_cost_exact_on_random_genotypes(style):
    """Topologies of every shape (tensors read twice, level-1 skips from the stem, ...2-1 heads)."""
    from c2fnas_auto.nas.topology import enumerate_topologies

    rng = random.Random(7)
    strides = ((1, 2, 2), (2, 1, 2), (1, 2, 2), (2, 2, 1))
    for t in rng.sample(enumerate_topologies(), 10):
        g = Genotype(list(t), [rng.choice(OPS) for _ in t])
        c = NetworkConfig(1, 2, stem_channels=2, level_channels=(2, 4, 4, 6), strides=strides,
                          deep_supervision=rng.random() < 0.5, cell_style=style)
        net = build_network(g, c)
        measured = saved_activation_bytes(net, torch.randn(2, 1, 8, 8, 16))
        est = estimate_cost(g, c, (8, 8, 16), batch_size=2, amp=False)
        assert (est.activation_bytes, est.params) == (measured, count_parameters(net)), g.topology_string()


@pytest.mark.parametrize("style", CELL_STYLES)
def test_supernet_path_cost_matches_hooks(style):
    c = config(ANISO, False, style)
    levels = reference_genotype().levels
    ops = ["3d"] * 6 + ["p3d"] * 6
    sn = build_supernet(levels, c)
    measured = saved_activation_bytes(sn, torch.randn(1, 2, 8, 32, 32), forward_fn=lambda n, x: n(x, ops))
    est = estimate_supernet_cost(levels, c, (8, 32, 32), ops, batch_size=1, amp=False)
    assert est.activation_bytes == measured
    assert est.params == count_parameters(sn)


@pytest.mark.parametrize("style", CELL_STYLES)
def test_memory_parts_and_scaling(style):
    g, c = reference_genotype(), NetworkConfig(1, 3, cell_style=style)
    fp32 = estimate_cost(g, c, (64, 64, 64), batch_size=2, amp=False)
    amp = estimate_cost(g, c, (64, 64, 64), batch_size=2, amp=True)
    assert fp32.weight_bytes == fp32.gradient_bytes == fp32.optimizer_bytes == 4 * fp32.params
    assert amp.weight_bytes == 6 * amp.params
    assert 0.45 < amp.activation_bytes / fp32.activation_bytes < 0.55
    parts = fp32.weight_bytes + fp32.gradient_bytes + fp32.optimizer_bytes + fp32.activation_bytes
    assert parts < fp32.training_bytes < parts + 0.2 * fp32.activation_bytes
    b4 = estimate_cost(g, c, (64, 64, 64), batch_size=4, amp=False)
    fixed = estimate_cost(g, c, (64, 64, 64), batch_size=0, amp=False).activation_bytes  # the fused head's kernels
    assert 0 < fixed < 0.01 * fp32.activation_bytes if style == "c2fnas" else fixed == 0
    assert b4.activation_bytes - fixed == 2 * (fp32.activation_bytes - fixed) and b4.flops == fp32.flops
    big = estimate_cost(g, c, (128, 64, 64), batch_size=2, amp=False)
    assert big.flops == 2 * fp32.flops  # conv FLOPs are linear in the voxel count
    assert big.params == fp32.params


@pytest.mark.parametrize("style", CELL_STYLES)
def test_amp_estimate_close_to_cpu_autocast_hooks(style):
    """CPU bfloat16 autocast stands in for CUDA float16 here (no GPU in CI): 2-byte activations."""
    g = reference_genotype()
    c = NetworkConfig(1, 3, stem_channels=8, level_channels=(16, 32, 32, 64), cell_style=style)
    net = build_network(g, c)

    def fwd(n, x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return n(x)

    measured = saved_activation_bytes(net, torch.randn(2, 1, 32, 32, 32), forward_fn=fwd)
    est = estimate_cost(g, c, (32, 32, 32), batch_size=2, amp=True)
    assert abs(est.activation_bytes - measured) <= 0.10 * measured
