"""--precision / --compile / --channels-last: what runs on a CPU, and one-line refusals."""

import pytest
import torch

from c2fnas_auto.cli._execution import add_execution_flags, execution_from_args, settings_from_args
from c2fnas_auto.inference.sliding_window import sliding_window_predict
from c2fnas_auto.nas.config import NetworkConfig
from c2fnas_auto.nas.execution import (ExecutionError, ExecutionOptions, autocast, check_channels_last,
                                        check_precision, grad_scaler, prepare_network)
from c2fnas_auto.nas.genotype import reference_genotype
from c2fnas_auto.nas.network import build_network
from c2fnas_auto.training.loop import StepContext, train_step
from c2fnas_auto.training.loss import DeepSupervisionLoss
from c2fnas_auto.training.schedule import build_optimizer

CPU = torch.device("cpu")
PATCH = (16, 32, 32)


def net(ds: bool = True):
    torch.manual_seed(0)
    cfg = NetworkConfig(in_channels=1, num_classes=3, stem_channels=4, level_channels=(8, 8, 16, 16),
                        deep_supervision=ds)
    return build_network(reference_genotype(), cfg)


def batch():
    g = torch.Generator().manual_seed(1)
    return {"data": torch.randn(2, 1, *PATCH, generator=g),
            "target": torch.randint(0, 3, (2, 1, *PATCH), generator=g).float()}


def test_defaults_keep_the_old_rule():
    assert check_precision(None, CPU) == "fp32"
    assert check_precision(None, torch.device("cuda")) == "fp16"
    assert check_channels_last(None, CPU) and not check_channels_last(None, torch.device("cuda"))
    assert not check_channels_last(False, CPU) and check_channels_last(True, torch.device("cuda"))
    ctx = StepContext(net(), build_optimizer(net()), DeepSupervisionLoss(), CPU)
    assert ctx.precision == "fp32" and not ctx.amp and not ctx.scaler.is_enabled()


@pytest.mark.parametrize("bad, words", [("fp16", "needs a CUDA device"), ("int8", "must be one of")])
def test_impossible_precisions_are_one_line(bad, words):
    with pytest.raises(ExecutionError, match=words) as e:
        check_precision(bad, CPU)
    assert "\n" not in str(e.value)
    with pytest.raises(ExecutionError):
        StepContext(net(), build_optimizer(net()), DeepSupervisionLoss(), CPU,
                    execution=ExecutionOptions(precision=bad))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 needs CUDA")
def test_fp16_on_cuda_has_an_active_scaler():  # pragma: no cover - runs on the GPU check
    dev = torch.device("cuda")
    assert grad_scaler(dev, "fp16").is_enabled() and not grad_scaler(dev, "bf16").is_enabled()


def test_bf16_training_step_runs_on_the_cpu_and_learns_the_same_direction():
    losses = {}
    for precision in ("fp32", "bf16"):
        n = net()
        ctx = StepContext(n, build_optimizer(n), DeepSupervisionLoss(), CPU,
                          execution=ExecutionOptions(precision=precision))
        assert not ctx.scaler.is_enabled()
        b = batch()
        losses[precision] = [train_step(ctx, b)[0] for _ in range(3)]
    assert all(abs(a - b) < 0.05 * abs(a) for a, b in zip(losses["fp32"], losses["bf16"]))
    with autocast(CPU, "bf16"):
        assert torch.nn.functional.conv3d(torch.randn(1, 1, 3, 3, 3), torch.randn(1, 1, 1, 1, 1)).dtype \
            == torch.bfloat16


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_a_bf16_step_with_non_finite_gradients_is_skipped_an_fp32_one_is_not(precision):
    """CPU bf16 conv weight gradients are now and then NaN (oneDNN, small spatial extents):
    bf16 skips that step like fp16's scaler would; fp32 keeps showing a real divergence."""
    n = net()
    ctx = StepContext(n, build_optimizer(n), DeepSupervisionLoss(), CPU,
                      execution=ExecutionOptions(precision=precision))
    weight = n.stem[0].conv.weight
    before = {k: p.detach().clone() for k, p in n.named_parameters()}
    handle = weight.register_hook(lambda g: torch.full_like(g, float("nan")))
    train_step(ctx, batch())
    handle.remove()
    if precision == "bf16":
        assert ctx.skipped_steps == 1
        assert all(torch.equal(p, before[k]) for k, p in n.named_parameters()), "no weight changed"
        for _ in range(5):  # later steps go on (one may meet the real fault: it is skipped too)
            train_step(ctx, batch())
        assert ctx.skipped_steps < 6 and not torch.equal(weight, before["stem.0.conv.weight"])
        assert all(torch.isfinite(p).all() for p in n.parameters())
    else:
        assert ctx.skipped_steps == 0 and not torch.isfinite(weight).all()


def test_bf16_sliding_window_agrees_with_fp32_and_accumulates_in_fp32():
    n = net(ds=False)
    data = torch.randn(1, 24, 40, 40)
    a = sliding_window_predict(n, data, PATCH, 3, mirror_axes=None, execution=ExecutionOptions(precision="fp32"))
    b = sliding_window_predict(n, data, PATCH, 3, mirror_axes=None, execution=ExecutionOptions(precision="bf16"))
    assert b.dtype == torch.float32
    # an untrained network amplifies bf16's rounding through 12 instance norms: a sanity bound
    # only; the Dice of trained networks is compared in benchmarks/precision_accuracy.py
    assert float((a.argmax(0) == b.argmax(0)).float().mean()) > 0.9
    with pytest.raises(ExecutionError, match="fp16"):
        sliding_window_predict(n, data, PATCH, 3, mirror_axes=None, execution=ExecutionOptions(precision="fp16"))


def test_cli_flags_become_execution_options():
    import argparse

    p = argparse.ArgumentParser()
    add_execution_flags(p)
    assert execution_from_args(p.parse_args([])) == ExecutionOptions()
    assert execution_from_args(p.parse_args(["--precision", "bf16", "--compile", "--channels-last"])) == \
        ExecutionOptions(precision="bf16", compile=True, channels_last=True)
    assert execution_from_args(p.parse_args(["--no-channels-last"])).channels_last is False
    with pytest.raises(SystemExit):
        p.parse_args(["--precision", "fp8"])


def test_cli_settings_take_every_flag_named_like_a_field():
    from c2fnas_auto.cli.search import build_parser as search_parser
    from c2fnas_auto.cli.train import build_parser as train_parser
    from c2fnas_auto.search.settings import SearchSettings
    from c2fnas_auto.training.trainer import TrainerOptions

    args = search_parser().parse_args(["-t", "4", "--coarse-candidates", "7", "--coarse-op", "p3d", "--max-gflops",
                                       "2.5", "--heldout-fraction", "0.1", "--precision", "bf16"])
    s = settings_from_args(SearchSettings, args)
    assert (s.coarse_candidates, s.coarse_op, s.max_gflops, s.heldout_fraction, s.fold) == (7, "p3d", 2.5, 0.1, 0)
    assert s.execution == ExecutionOptions(precision="bf16")
    args = train_parser().parse_args(["4", "0", "--genotype", "g.json", "--no-progress", "--no-final-validation",
                                      "--patch-size", "8", "16", "16", "--compile"])
    o = settings_from_args(TrainerOptions, args, patch_size=tuple(args.patch_size))
    assert (o.genotype_file, o.progress, o.final_validation, o.patch_size) == ("g.json", False, False, (8, 16, 16))
    assert o.execution == ExecutionOptions(compile=True) and o.to_dict()["compile"] is True
    assert "execution" not in o.to_dict(), "checkpoints keep the options under their own names"


def test_execution_options_resolve_to_the_device_defaults_and_stay_frozen():
    import dataclasses

    opts = ExecutionOptions()
    assert opts.resolved(CPU) == ExecutionOptions(precision="fp32", channels_last=True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.precision = "bf16"
    with pytest.raises(ExecutionError, match="fp16 needs a CUDA device"):
        ExecutionOptions(precision="fp16").resolved(CPU)


def test_predictor_applies_the_options_and_refuses_fp16_on_cpu():
    from c2fnas_auto.inference.predictor import Predictor

    class Plans:
        patch_size, num_channels, num_classes = list(PATCH), 1, 3

    n = net(ds=False)
    p = Predictor.from_networks([n], Plans(), device="cpu", progress=False,
                                execution=ExecutionOptions(precision="bf16", channels_last=True))
    assert p.execution.precision == "bf16"
    assert next(n.parameters()).is_contiguous(memory_format=torch.channels_last_3d)
    with pytest.raises(ExecutionError, match="needs a CUDA device"):
        Predictor.from_networks([net(ds=False)], Plans(), device="cpu", progress=False,
                                execution=ExecutionOptions(precision="fp16"))
    plain = net(ds=False)
    Predictor.from_networks([plain], Plans(), device="cpu", progress=False,
                            execution=ExecutionOptions(channels_last=False))
    assert next(plain.parameters()).is_contiguous()


def test_a_network_on_the_cpu_is_channels_last_unless_asked_otherwise():
    cl = torch.channels_last_3d
    assert all(p.is_contiguous(memory_format=cl) for p in prepare_network(net()).parameters() if p.dim() == 5)
    assert all(p.is_contiguous() for p in prepare_network(net(), ExecutionOptions(channels_last=False)).parameters())


def _fresh_warnings(monkeypatch):
    from c2fnas_auto.nas import execution

    monkeypatch.setattr(execution, "_WARNED", set())
    return execution


@pytest.mark.parametrize("fast, warns", [(False, True), (True, False), (None, False)])
def test_bf16_on_a_cpu_without_fast_bf16_convolutions_warns_once(monkeypatch, capsys, fast, warns):
    execution = _fresh_warnings(monkeypatch)
    monkeypatch.setattr(execution, "cpu_bf16_is_fast", lambda: fast)
    assert check_precision("bf16", CPU) == "bf16"  # a warning, not a refusal: the user asked by name
    assert check_precision("bf16", CPU) == "bf16"
    err = capsys.readouterr().err
    assert err.count("no fast bf16 convolution") == (1 if warns else 0)
    if warns:
        assert len(err.strip().splitlines()) == 1 and "--precision fp32 is faster here" in err
    check_precision("fp32", CPU)
    assert "bf16" not in capsys.readouterr().err


@pytest.mark.parametrize("error", [AttributeError, RuntimeError])
def test_bf16_probe_missing_from_the_torch_build_says_unknown(monkeypatch, error):
    execution = _fresh_warnings(monkeypatch)

    class Ops:
        def _is_mkldnn_bf16_supported(self):
            raise error("no such op")

    monkeypatch.setattr(execution.torch.ops, "mkldnn", Ops())
    assert execution.cpu_bf16_is_fast() is None


def test_bf16_probe_answers_on_this_build():
    from c2fnas_auto.nas.execution import cpu_bf16_is_fast

    assert cpu_bf16_is_fast() in (True, False)
