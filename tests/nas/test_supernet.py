import random
from dataclasses import replace

import pytest
import torch

from c2fnas_auto.errors import GenotypeError
from c2fnas_auto.nas.config import CELL_STYLES, NetworkConfig
from c2fnas_auto.nas.genotype import reference_genotype
from c2fnas_auto.nas.network import count_parameters
from c2fnas_auto.nas.supernet import build_supernet

CONFIG = NetworkConfig(1, 2, stem_channels=4, level_channels=(4, 8, 8, 16),
                       strides=((1, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 2)), deep_supervision=True)
# a topology whose first cell is on level 2 and whose decoder ends 2-1 (stem skip, stem concat)
OTHER_LEVELS = [2, 2, 3, 4, 4, 3, 2, 2, 2, 2, 2, 1]


@pytest.mark.parametrize("style", CELL_STYLES)
@pytest.mark.parametrize("seed, levels", [(0, reference_genotype().levels), (1, reference_genotype().levels),
                                          (2, OTHER_LEVELS)])
def test_path_forward_equals_extracted_network(seed, levels, style):
    torch.manual_seed(seed)
    sn = build_supernet(levels, replace(CONFIG, cell_style=style))
    # perturb the affine norms so the comparison is not trivially on identity weights
    with torch.no_grad():
        for p in sn.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ops = sn.random_ops(random.Random(seed))
    net = sn.extract(ops)
    x = torch.randn(2, 1, 8, 32, 32)
    sn.train()
    net.train()
    a, b = sn(x, ops), net(x)
    assert len(a) == len(b) == max(levels)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, rtol=0, atol=0)  # same modules, same order: bit for bit
    sn.eval()
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(sn(x, ops), net(x), rtol=0, atol=0)


@pytest.mark.parametrize("style", CELL_STYLES)
def test_extracted_weights_are_copies_and_supernet_holds_all_ops(style):
    sn = build_supernet(reference_genotype().levels, replace(CONFIG, cell_style=style))
    net = sn.extract(reference_genotype().ops)
    assert count_parameters(sn) > count_parameters(net)
    p_net = dict(net.named_parameters())["cells.0.ops.2d.0.conv.weight"]
    with torch.no_grad():
        p_net.add_(1.0)
    assert not torch.equal(p_net, dict(sn.named_parameters())["cells.0.ops.2d.0.conv.weight"])


def test_sampling_forward_and_bad_ops():
    sn = build_supernet([1] * 12, CONFIG)
    sn.eval()
    fwd = sn.sampling_forward(seed=3)
    with torch.no_grad():
        assert fwd(sn, torch.randn(1, 1, 8, 32, 32)).shape == (1, 2, 8, 32, 32)
    with pytest.raises(GenotypeError, match="unknown op"):
        sn(torch.randn(1, 1, 8, 32, 32), ["4d"] * 12)



class _PathRecorder:
    """Stands in for the supernet: records the ops of every call."""

    def __init__(self):
        self.training = True
        self.paths: list[list[str]] = []

    def __call__(self, x, ops):
        self.paths.append(list(ops))
        return x


def _train_paths(fwd, n_eval: int, n_train: int) -> list[list[str]]:
    rec = _PathRecorder()
    rec.training = False
    for _ in range(n_eval):
        fwd(rec, None)  # validation calls: not steps
    rec.training = True
    for _ in range(n_train):
        fwd(rec, None)
    return rec.paths[n_eval:]


def test_sampling_forward_warmup_gives_whole_network_paths_first():
    """The first `uniform_steps` training calls use one op in every cell; later ones mix ops;
    eval-mode calls do not count as steps; the same seed gives the same paths."""
    sn = build_supernet([1] * 12, CONFIG)
    paths = _train_paths(sn.sampling_forward(seed=0, uniform_steps=20), 5, 60)
    assert all(len(set(p)) == 1 for p in paths[:20])
    assert {p[0] for p in paths[:20]} == {"2d", "3d", "p3d"}
    assert sum(len(set(p)) > 1 for p in paths[20:]) >= 35  # 12 cells: a mixed path almost always
    assert _train_paths(sn.sampling_forward(seed=0, uniform_steps=20), 5, 60) == paths
    no_warmup = _train_paths(sn.sampling_forward(seed=0), 0, 20)
    assert sum(len(set(p)) > 1 for p in no_warmup) >= 15
