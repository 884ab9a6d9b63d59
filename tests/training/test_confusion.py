"""The per-step training metrics: exact against the plain formulas they replace."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from c2fnas_auto.training.loop import confusion_counts
from c2fnas_auto.utils.tensors import channel_argmax


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("dim", [0, 1, -1])
def test_channel_argmax_equals_torch_argmax_with_ties_and_nans(dtype, dim):
    g = torch.Generator().manual_seed(0)
    for k in (1, 2, 3, 5):
        shape = [2, k, 3, 4, 5] if dim == 1 else ([k, 3, 4, 5] if dim == 0 else [2, 3, 4, k])
        x = torch.randint(-2, 3, shape, generator=g).to(dtype)  # many ties: the first maximum wins
        x[torch.rand(shape, generator=g) < 0.1] = float("nan")  # a NaN counts as the maximum
        x[torch.rand(shape, generator=g) < 0.05] = float("inf")
        assert torch.equal(channel_argmax(x, dim), x.argmax(dim)), (k, dim)
        y = torch.randn(shape, generator=g).to(dtype)
        assert torch.equal(channel_argmax(y, dim), y.argmax(dim))


def test_channel_argmax_of_an_empty_class_axis_raises_as_torch_does():
    with pytest.raises((RuntimeError, IndexError)):
        channel_argmax(torch.zeros(2, 0, 3), 1)


def _plain_counts(logits, target):
    k = logits.shape[1]
    pred = logits.argmax(1)
    t = target[:, 0] if target.ndim == logits.ndim else target
    tp, fp, fn = (np.zeros(k - 1) for _ in range(3))
    for c in range(1, k):
        p, r = pred == c, t == c
        tp[c - 1], fp[c - 1], fn[c - 1] = (p & r).sum().item(), (p & ~r).sum().item(), (~p & r).sum().item()
    return tp, fp, fn


@pytest.mark.parametrize("k", [2, 3, 4])
def test_confusion_counts_equal_the_per_class_masks_ignore_labels_included(k):
    g = torch.Generator().manual_seed(k)
    logits = torch.randn(2, k, 4, 6, 5, generator=g)
    for target in (torch.randint(0, k, (2, 1, 4, 6, 5), generator=g),
                   torch.randint(-1, k + 2, (2, 1, 4, 6, 5), generator=g),  # -1 and >= k: ignore labels
                   torch.randint(0, k, (2, 4, 6, 5), generator=g).to(torch.uint8)):  # no channel axis
        for ours, plain in zip(confusion_counts(logits, target), _plain_counts(logits, target)):
            np.testing.assert_array_equal(ours, plain)


def test_fast_path_switches_are_read_when_a_step_context_is_built_and_restored_after():
    from torch import nn

    from c2fnas_auto.training.loop import StepContext
    from c2fnas_auto.utils.fast_paths import fast_paths, fast_paths_set

    net = nn.Linear(1, 1)

    def make() -> StepContext:
        return StepContext(net, torch.optim.SGD(net.parameters(), lr=0.1), nn.MSELoss(), torch.device("cpu"))

    with fast_paths_set(channel_argmax=False) as switches:
        assert not switches.channel_argmax and switches.axis_upsample and switches.fused_upsample
        off = make()
    on = make()
    assert off.argmax is torch.argmax and on.argmax is channel_argmax, "each context keeps what it was built with"
    with pytest.raises(RuntimeError):
        with fast_paths_set(axis_upsample=False):
            raise RuntimeError("the block failed")
    assert fast_paths() == type(fast_paths())(), "every switch back on, also after an error"
