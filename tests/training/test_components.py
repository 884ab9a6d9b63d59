"""Unit tests of the training pieces that need no preprocessed task."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from c2fnas_auto.training.augmentation import build_transforms, initial_patch_size, use_2d_augmentation
from c2fnas_auto.training.dataloader import CaseData, PatchSampler, crop_with_padding, make_batch_iterator
from c2fnas_auto.training.logger import TrainingLog
from c2fnas_auto.training.loss import DeepSupervisionLoss, DiceCELoss, deep_supervision_weights, soft_dice_loss
from c2fnas_auto.training.schedule import poly_lr
from c2fnas_auto.training.splits import make_splits


def _case(shape=(12, 20, 20), seed=0, cid="c0") -> CaseData:
    rng = np.random.default_rng(seed)
    seg = np.zeros((1,) + shape, dtype=np.int8)
    seg[0, 4:7, 5:9, 5:9] = 1
    seg[0, 8:10, 12:15, 12:15] = 2
    data = rng.normal(size=(1,) + shape).astype(np.float32) + seg.astype(np.float32)
    locs = {c: np.argwhere(seg[0] == c) for c in (1, 2)}
    return CaseData(cid, data, seg, locs)


@pytest.mark.parametrize("patch", [(8, 16, 16), (4, 16, 16)])
def test_augmentation_keeps_shapes_and_label_set(patch):
    np.random.seed(0)
    first = initial_patch_size(patch)
    assert all(f >= p for f, p in zip(first, patch))
    assert use_2d_augmentation(patch) == (patch[0] == 4)
    if use_2d_augmentation(patch):
        assert first[0] == patch[0]  # 2D-style: nothing rotates into the low-resolution axis
    rng = np.random.default_rng(0)
    data = rng.normal(size=(2, 2) + first).astype(np.float32)
    seg = rng.integers(0, 3, size=(2, 1) + first).astype(np.float32)
    transforms = build_transforms(patch)
    for _ in range(15):
        out = transforms(data=data.copy(), seg=seg.copy())
        assert out["data"].shape == (2, 2) + patch
        assert out["seg"].shape == (2, 1) + patch
        assert np.isfinite(out["data"]).all()
        assert set(np.unique(out["seg"])) <= {0, 1, 2}


def test_crop_with_padding_pads_outside():
    a = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5).astype(np.float32) + 1
    out = crop_with_padding(a, (-1, 1, 2), (5, 2, 4))
    assert out.shape == (2, 5, 2, 4)
    assert (out[:, 0] == 0).all() and (out[:, 4] == 0).all()
    np.testing.assert_array_equal(out[:, 1:4, :, :3], a[:, :, 1:3, 2:5])
    assert (out[:, :, :, 3] == 0).all()


def test_sampler_forces_foreground_and_pads_small_cases():
    case = _case()
    sampler = PatchSampler([case], (16, 24, 24), batch_size=3)
    assert [sampler.force_foreground(i) for i in range(3)] == [False, False, True]
    rng = np.random.default_rng(1)
    for _ in range(20):
        batch = sampler.sample(rng)
        assert batch["data"].shape == (3, 1, 16, 24, 24)
        assert (batch["seg"][2] > 0).any()  # the last third is centred on foreground
    # a patch smaller than the case: forced samples still hit foreground
    small = PatchSampler([case], (4, 6, 6), batch_size=1, oversample_foreground=1.0)
    for _ in range(20):
        assert (small.sample(rng)["seg"] > 0).any()


def test_batch_iterator_is_deterministic_for_a_seed():
    cases = [_case(seed=0, cid="a"), _case(seed=1, cid="b")]
    a = make_batch_iterator(cases, (8, 16, 16), 2, seed=3)
    b = make_batch_iterator(cases, (8, 16, 16), 2, seed=3)
    c = make_batch_iterator(cases, (8, 16, 16), 2, seed=4)
    ba, bb, bc = next(a), next(b), next(c)
    assert ba["data"].dtype == torch.float32 and ba["target"].dtype == torch.int64
    assert torch.equal(ba["data"], bb["data"]) and torch.equal(ba["target"], bb["target"])
    assert not torch.equal(ba["data"], bc["data"])


def test_workers_produce_different_batches():
    cases = [_case(seed=0, cid="a")]
    it = make_batch_iterator(cases, (8, 16, 16), 2, seed=0, num_workers=2)
    first, second = next(it), next(it)  # one from each worker
    assert not torch.equal(first["data"], second["data"])


def test_dice_ce_loss_prefers_the_right_answer():
    target = torch.zeros(2, 1, 4, 6, 6, dtype=torch.long)
    target[:, :, 1:3, 2:4, 2:4] = 1
    good = torch.full((2, 2, 4, 6, 6), -5.0)
    good[:, 1][target[:, 0] == 1] = 5.0
    good[:, 0][target[:, 0] == 0] = 5.0
    bad = -good
    loss = DiceCELoss()
    assert loss(good, target) < loss(bad, target)
    assert soft_dice_loss(good, target).item() == pytest.approx(-1.0, abs=1e-3)


def test_deep_supervision_weights_and_targets():
    w = deep_supervision_weights(3)
    assert sum(w) == pytest.approx(1.0) and w[0] == pytest.approx(2 * w[1]) == pytest.approx(4 * w[2])
    target = torch.randint(0, 2, (2, 1, 8, 8, 8))
    outs = [torch.randn(2, 2, 8, 8, 8, requires_grad=True), torch.randn(2, 2, 4, 4, 4, requires_grad=True)]
    loss = DeepSupervisionLoss()(outs, target)
    loss.backward()
    assert outs[1].grad is not None and torch.isfinite(loss)
    single = DeepSupervisionLoss()(outs[0], target)
    assert single.item() == pytest.approx(DiceCELoss()(outs[0], target).item())


def test_poly_lr():
    assert poly_lr(0, 10) == pytest.approx(1e-2)
    assert poly_lr(5, 10) == pytest.approx(1e-2 * 0.5 ** 0.9)
    assert poly_lr(10, 10) == 0.0


def test_splits_are_deterministic_and_cover_every_case():
    ids = [f"case_{i}" for i in range(8)]
    s1, s2 = make_splits(ids, seed=1), make_splits(list(reversed(ids)), seed=1)
    assert s1 == s2 and len(s1) == 5
    assert sorted(c for f in s1 for c in f["val"]) == ids
    for f in s1:
        assert not set(f["train"]) & set(f["val"]) and len(f["train"]) + len(f["val"]) == 8
    assert make_splits(ids, seed=2) != s1
    few = make_splits(ids[:3])
    assert len(few) == 3 and all(len(f["val"]) == 1 for f in few)


def test_training_log_ema_best_and_files(tmp_path):
    log = TrainingLog()
    for i, v in enumerate([0.2, 0.6, 0.1]):
        log.add_epoch({"epoch": i + 1, "lr": 0.01, "train_loss": 1.0 - i * 0.1, "val_loss": 1.0,
                       "train_pseudo_dice": v, "val_pseudo_dice": v, "epoch_seconds": 1.0})
        improved = log.improved()
        assert improved == (i < 2)
    assert log.epochs[1]["ema_pseudo_dice"] == pytest.approx(0.9 * 0.2 + 0.1 * 0.6)
    log.message("hello")
    log.write(tmp_path)
    assert (tmp_path / "progress.png").stat().st_size > 0
    assert "hello" in (tmp_path / "training_log.txt").read_text()
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert len(metrics["epochs"]) == 3
    again = TrainingLog.from_state_dict(log.state_dict())
    assert again.best_ema == log.best_ema and not math.isinf(again.best_ema)


def test_split_batch_covers_the_global_batch_and_keeps_oversampling():
    from c2fnas_auto.utils.distributed import DistContext, split_batch

    case = _case()
    for world, batch in [(2, 2), (2, 5), (3, 7)]:
        shares = [split_batch(batch, DistContext(rank=r, world_size=world)) for r in range(world)]
        assert sum(s for s, _ in shares) == batch
        assert [o for _, o in shares] == [sum(s for s, _ in shares[:r]) for r in range(world)]
        forced = [PatchSampler([case], (4, 4, 4), s, global_batch=batch, offset=o).force_foreground(i)
                  for s, o in shares for i in range(s)]
        assert forced == [PatchSampler([case], (4, 4, 4), batch).force_foreground(i) for i in range(batch)]
        assert any(forced)


def test_final_patch_reaches_every_border_of_the_case():
    case = _case(shape=(12, 20, 20))
    first, final = (12, 30, 30), (12, 8, 8)  # initial patch larger than the case, final one smaller
    sampler = PatchSampler([case], first, batch_size=1, oversample_foreground=0.0, final_patch_size=final)
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(200):
        lower = sampler._lower_corner(case, rng, force_fg=False)
        starts.add(lower[1] + (first[1] - final[1]) // 2)  # where the centre crop starts in the case
    assert min(starts) == 0 and max(starts) == 20 - 8
