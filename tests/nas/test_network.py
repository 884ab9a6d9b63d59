import dataclasses
import random
from pathlib import Path

import pytest
import torch

from c2fnas_auto.errors import C2FNASError
from c2fnas_auto.nas.config import CELL_STYLES, NetworkConfig, NetworkConfigError
from c2fnas_auto.nas.genotype import OPS, Genotype, reference_genotype
from c2fnas_auto.nas.network import build_network, count_parameters
from c2fnas_auto.nas.plan import make_plan
from c2fnas_auto.nas.topology import enumerate_topologies

REPO = Path(__file__).resolve().parents[2]

ANISO = ((1, 2, 2), (2, 2, 2), (1, 2, 2), (2, 2, 2))
GENOTYPES = [
    reference_genotype(),
    Genotype([2, 3, 4, 4, 3, 3, 2, 2, 1, 1, 1, 1], ["3d", "p3d", "2d"] * 4),
    Genotype([1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 1, 1], ["p3d"] * 12),
    Genotype([1] * 12, ["2d", "3d"] * 6),
]


def tiny(strides=((2, 2, 2),) * 4, **kw) -> NetworkConfig:
    kw.setdefault("in_channels", 2)
    kw.setdefault("num_classes", 3)
    return NetworkConfig(stem_channels=4, level_channels=(4, 8, 8, 16), strides=strides, **kw)


def random_genotypes(n: int, seed: int) -> list[Genotype]:
    """`n` valid genotypes: topologies drawn from the enumeration, ops uniformly."""
    rng = random.Random(seed)
    tops = enumerate_topologies()
    return [Genotype(list(t), [rng.choice(OPS) for _ in t]) for t in rng.sample(tops, n)]


@pytest.mark.parametrize("style", CELL_STYLES)
@pytest.mark.parametrize("g", GENOTYPES, ids=lambda g: g.topology_string())
@pytest.mark.parametrize("strides, patch", [(((2, 2, 2),) * 4, (32, 32, 32)), (((2, 2, 2),) * 4, (16, 32, 48)),
                                             (ANISO, (8, 32, 48))])
def test_output_shape_equals_input_shape(g, strides, patch, style):
    torch.manual_seed(0)
    net = build_network(g, tiny(strides, cell_style=style))
    x = torch.randn(1, 2, *patch)
    y = net(x)
    assert y.shape == (1, 3, *patch)
    y.float().mean().backward()
    assert all(p.grad is not None for p in net.parameters())


@pytest.mark.parametrize("style", CELL_STYLES)
def test_thirty_random_genotypes_with_per_axis_strides(style):
    """Every module is used (all get a gradient) and the output has the input's shape,
    for topologies that start on level 2, never reach level 4, end with ...2-1, etc."""
    strides = ((1, 2, 2), (2, 1, 2), (1, 2, 2), (2, 2, 1))  # every axis skips a step somewhere
    for i, g in enumerate(random_genotypes(30, seed=12)):
        torch.manual_seed(i)
        net = build_network(g, NetworkConfig(1, 2, stem_channels=2, level_channels=(2, 4, 4, 4), strides=strides,
                                             deep_supervision=i % 3 == 0, cell_style=style))
        x = torch.randn(1, 1, 8, 8, 16)
        out = net(x)
        outs = out if isinstance(out, list) else [out]
        assert outs[0].shape == (1, 2, 8, 8, 16), g.topology_string()
        sum(o.sum() for o in outs).backward()
        assert all(p.grad is not None for p in net.parameters()), g.topology_string()


@pytest.mark.parametrize("style", CELL_STYLES)
def test_deep_supervision_outputs_and_scales(style):
    g = reference_genotype()
    net = build_network(g, tiny(ANISO, deep_supervision=True, cell_style=style))
    scales = net.deep_supervision_scales()
    assert scales == [(1.0, 1.0, 1.0), (1.0, 0.5, 0.5), (0.5, 0.25, 0.25), (0.5, 0.125, 0.125)]
    x = torch.randn(2, 2, 8, 32, 64)
    outs = net(x)
    assert isinstance(outs, list) and len(outs) == 4
    for out, s in zip(outs, scales):
        assert tuple(out.shape[2:]) == tuple(int(n * f) for n, f in zip(x.shape[2:], s))
    net.eval()
    with torch.no_grad():
        assert net(x).shape == (2, 3, 8, 32, 64)


@pytest.mark.parametrize("style", CELL_STYLES)
def test_through_plane_axis_sets_the_flat_kernel_axis(style):
    g = Genotype([1] * 12, ["p3d"] + ["2d"] * 11)
    for axis in (0, 1, 2):
        net = build_network(g, tiny(through_plane_axis=axis, cell_style=style))
        two_d, one_d = net.cells[0].ops["p3d"]
        k2, k1 = list(two_d.conv.kernel_size), list(one_d.conv.kernel_size)
        assert k2[axis] == 1 and sorted(k2) == [1, 3, 3]
        assert k1[axis] == 3 and sorted(k1) == [1, 1, 3]
        assert list(net.cells[1].ops["2d"][0].conv.kernel_size)[axis] == 1


def test_runs_under_autocast():
    net = build_network(reference_genotype(), tiny())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = net(torch.randn(1, 2, 32, 32, 32))
    assert y.shape == (1, 3, 32, 32, 32)
    assert torch.isfinite(y.float()).all()


def test_bad_inputs_are_user_errors():
    net = build_network(reference_genotype(), tiny())
    with pytest.raises(NetworkConfigError, match="not divisible by the total downsampling"):
        net(torch.randn(1, 2, 32, 32, 40))
    with pytest.raises(NetworkConfigError, match="expects 2 input channel"):
        net(torch.randn(1, 1, 32, 32, 32))
    with pytest.raises(C2FNASError, match="only 3 levels"):
        build_network(reference_genotype(), NetworkConfig(1, 2, level_channels=(8, 8, 8),
                                                          strides=((2, 2, 2),) * 3))


def test_config_round_trip_and_validation():
    c = tiny(ANISO, deep_supervision=True, through_plane_axis=1)
    assert NetworkConfig.from_dict(c.to_dict()) == c
    assert c.total_downsampling() == (4, 16, 16)
    with pytest.raises(NetworkConfigError, match="one stride per level"):
        NetworkConfig(1, 2, strides=((2, 2, 2),) * 3)
    with pytest.raises(NetworkConfigError, match="unknown network config key"):
        NetworkConfig.from_dict({"in_channels": 1, "num_classes": 2, "width": 3})


def test_cell_style_default_legacy_and_validation():
    assert NetworkConfig(1, 2).cell_style == "c2fnas"
    assert NetworkConfig(1, 2).to_dict()["cell_style"] == "c2fnas"
    for style in CELL_STYLES:
        assert NetworkConfig.from_dict(NetworkConfig(1, 2, cell_style=style).to_dict()).cell_style == style
    # a plans/checkpoint dict from before the field was trained with residual cells
    old = {k: v for k, v in NetworkConfig(1, 2).to_dict().items() if k != "cell_style"}
    assert NetworkConfig.from_dict(old).cell_style == "residual"
    with pytest.raises(NetworkConfigError, match="cell_style must be one of c2fnas, residual, got 'dense'"):
        NetworkConfig.from_dict({"in_channels": 1, "num_classes": 2, "cell_style": "dense"})


def test_old_residual_weights_load_through_a_config_without_cell_style():
    """A checkpoint saved before cell_style existed: its dict rebuilds the residual network."""
    g = reference_genotype()
    old_net = build_network(g, tiny(cell_style="residual"))
    old_dict = {k: v for k, v in tiny(cell_style="residual").to_dict().items() if k != "cell_style"}
    new_net = build_network(g, NetworkConfig.from_dict(old_dict))
    new_net.load_state_dict(old_net.state_dict())  # strict: same module names and shapes
    with pytest.raises(RuntimeError):
        build_network(g, tiny()).load_state_dict(old_net.state_dict())


def test_reference_wiring_matches_the_public_module():
    """Second inputs of C2FNAS-Panc as the public C2FNASNet wires them (tensor 0 = the stem)."""
    plan = make_plan(reference_genotype().levels, [[op] for op in reference_genotype().ops], NetworkConfig(1, 3))
    second = {c.index + 1: c.second_from for c in plan.cells if c.second_from is not None}
    assert second == {2: 0, 7: 6, 9: 8, 10: 9, 12: 10}  # same level: 2 and 12; after an up step: 7, 9, 10
    main = {c.index + 1: c.main_from for c in plan.cells if c.main_from != c.index}
    assert main == {7: 5, 9: 4, 10: 2}  # encoder skips: last encoder cell of levels 3, 2, 1
    assert [c.index + 1 for c in plan.cells if c.down is not None] == [3, 5, 6]
    assert plan.head.concat_from == (11, 12)
    up = plan.cells[6].second
    assert up.upsample == (2.0, 2.0, 2.0) and up.upsample_first and up.relu and not up.affine


def test_generalised_wiring_level_one_skip_and_head():
    """First cell on level 2: the stem is the level-1 skip; a ...2-1 ending concatenates that skip."""
    g = Genotype([2, 3, 4, 4, 3, 3, 2, 2, 2, 2, 2, 1], ["3d"] * 12)
    strides = ((1, 2, 2), (2, 1, 2), (1, 2, 2), (2, 2, 1))
    plan = make_plan(g.levels, [[op] for op in g.ops], NetworkConfig(1, 3, strides=strides))
    last = plan.cells[-1]
    assert last.main_from == 0 and last.second_from == 11
    assert last.second.upsample == (2.0, 1.0, 2.0)  # undoes strides[1] per axis, not a hard 2
    assert plan.head.concat_from == (0, 12)
    assert plan.head.expand.upsample == (1.0, 2.0, 2.0)
    # cells 7..11 on level 2: from the third on, each also reads the cell two back
    assert plan.cells[7].second_from is None  # cell 8: the cell before its predecessor is on level 3
    assert plan.cells[8].second_from == 7 and plan.cells[9].second_from == 8 and plan.cells[10].second_from == 9


# Parameters of the c2fnas wiring at paper widths (stem 32, levels 64/128/256/512), 1 input
# channel, 3 classes, counted module by module (c = the level's width):
#   stem      27*1*32 + 2*32 + 27*32*64 + 2*64                               =     56,352
#   cell      conv in c^2 + conv out c^2 + op + op's IN 2c
#             op: 2d 9c^2, 3d 27c^2, p3d (9+3)c^2 (one ReLU, one IN after both convs)
#   2nd input same level: c^2; after an up step: 1x1x1 (2c -> c) 2c^2, IN without affine
#   down      27*c_in*c_out + 2*c_out
#   head      27*128*64 + 2*64 + 27*64*32 + 2*32 + 32*3 (no bias)          =    276,768
PAPER_CELLS = [  # (width, op, second input) of C2FNAS-Panc, public reading of cells 6 and 7
    (64, "2d", None), (64, "p3d", "same"), (128, "3d", None), (128, "3d", None), (256, "3d", None),
    (512, "2d", None), (256, "3d", "up"), (256, "3d", None), (128, "p3d", "up"), (64, "3d", "up"),
    (64, "2d", None), (64, "3d", "same")]
OP_TAPS = {"2d": 9, "3d": 27, "p3d": 12}
# the residual style's counts as documented before the c2fnas style existed (13.95 M / 17.49 M)
RESIDUAL_REF, RESIDUAL_ALT = 13_950_083, 17_489_027


def paper_count(cells) -> int:
    stem = 27 * 1 * 32 + 2 * 32 + 27 * 32 * 64 + 2 * 64
    downs = sum(27 * a * b + 2 * b for a, b in [(64, 128), (128, 256), (256, 512)])
    head = 27 * 128 * 64 + 2 * 64 + 27 * 64 * 32 + 2 * 32 + 32 * 3
    body = 0
    for c, op, second in cells:
        body += 2 * c * c + OP_TAPS[op] * c * c + 2 * c + {None: 0, "same": c * c, "up": 2 * c * c}[second]
    return stem + downs + body + head


def test_full_size_parameter_counts():
    """Exact module count of the public C2FNASNet (15,313,856; the swapped reading of cells
    6 and 7 18,852,800), of the default head (+ one classifier bias per class), and of the
    residual style for the record. No forward pass."""
    assert paper_count(PAPER_CELLS) == 15_313_856
    swapped_cells = list(PAPER_CELLS)
    swapped_cells[5], swapped_cells[6] = (512, "3d", None), (256, "2d", "up")
    assert paper_count(swapped_cells) == 18_852_800
    ref = reference_genotype()
    alt = Genotype.load(REPO / "plans" / "c2fnas_panc_genotype_alt.json")
    assert ref.ops[5:7] == ["2d", "3d"] and alt.ops[5:7] == ["3d", "2d"]
    public = NetworkConfig(1, 3, classifier="relu")  # the public module's head: no classifier bias
    assert count_parameters(build_network(ref, public)) == 15_313_856
    assert count_parameters(build_network(alt, public)) == 18_852_800
    # the default "linear" classifier (start study) adds one bias per class and nothing else
    assert count_parameters(build_network(ref, NetworkConfig(1, 3))) == 15_313_856 + 3 == 15_313_859
    assert count_parameters(build_network(alt, NetworkConfig(1, 3))) == 18_852_800 + 3
    residual = NetworkConfig(1, 3, cell_style="residual")
    assert count_parameters(build_network(ref, residual)) == RESIDUAL_REF
    assert count_parameters(build_network(alt, residual)) == RESIDUAL_ALT


def test_patch_leaving_one_deep_voxel_is_rejected():
    net = build_network(reference_genotype(), tiny())
    with pytest.raises(NetworkConfigError, match="leaves one voxel on level 4"):
        net(torch.randn(1, 2, 16, 16, 16))
    # a topology that never reaches level 4 is fine with the same patch
    shallow = build_network(Genotype([1, 2, 3, 3, 2, 1, 1, 1, 1, 1, 1, 1], ["2d"] * 12), tiny())
    assert shallow(torch.randn(1, 2, 16, 16, 16)).shape == (1, 3, 16, 16, 16)


def test_classifier_option_changes_only_the_head():
    """"linear": the classifier reads the last norm directly and has a bias; "relu": the public
    module's ReLU -> conv without bias. Same weights elsewhere; a stored config without the
    field is the public head, so networks trained before the field still load."""
    g = reference_genotype()
    torch.manual_seed(0)
    lin = build_network(g, tiny())
    torch.manual_seed(0)
    pub = build_network(g, dataclasses.replace(tiny(), classifier="relu"))
    assert lin.head_classifier.relu is None and lin.head_classifier.conv.bias is not None
    assert pub.head_classifier.relu is not None and pub.head_classifier.conv.bias is None
    extra = set(lin.state_dict()) - set(pub.state_dict())
    assert extra == {"head_classifier.conv.bias"} and not set(pub.state_dict()) - set(lin.state_dict())
    legacy = tiny().to_dict()
    del legacy["classifier"]
    assert NetworkConfig.from_dict(legacy).classifier == "relu"
    assert NetworkConfig.from_dict(tiny().to_dict()).classifier == "linear"
    with pytest.raises(NetworkConfigError, match="classifier must be one of linear, relu"):
        dataclasses.replace(tiny(), classifier="sigmoid")
    res = build_network(g, dataclasses.replace(tiny(), cell_style="residual", classifier="relu"))
    res_lin = build_network(g, dataclasses.replace(tiny(), cell_style="residual"))
    assert set(res.state_dict()) == set(res_lin.state_dict())  # the residual head is not affected
