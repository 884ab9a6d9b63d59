"""The speed rewrites are exact: same outputs, gradients, parameter names and count as the
unrewritten network (in-place ReLUs, channels-last layout, compiled forward)."""

import copy

import pytest
import torch
from torch import nn

from c2fnas_auto.nas.config import CELL_STYLES, NetworkConfig
from c2fnas_auto.nas.cost import estimate_cost
from c2fnas_auto.nas.execution import ExecutionOptions, prepare_network
from c2fnas_auto.nas.genotype import Genotype, reference_genotype
from c2fnas_auto.nas.network import build_network, count_parameters
from c2fnas_auto.nas.supernet import build_supernet
from c2fnas_auto.training.start_check import DeadHeadProbe
from c2fnas_auto.utils.fast_paths import fast_paths_set

GENOTYPES = [reference_genotype(), Genotype([2, 3, 4, 4, 3, 3, 2, 2, 1, 1, 1, 1], ["3d", "p3d", "2d"] * 4)]
PATCH = (16, 32, 32)


def config(style: str, deep_supervision: bool = True) -> NetworkConfig:
    return NetworkConfig(in_channels=2, num_classes=3, stem_channels=4, level_channels=(8, 8, 16, 16),
                         deep_supervision=deep_supervision, cell_style=style)


def unrewritten(net: nn.Module) -> nn.Module:
    """The same weights with every ReLU out of place: the network before the rewrite."""
    ref = copy.deepcopy(net)
    for m in ref.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    return ref


def outputs_and_grads(net: nn.Module, x: torch.Tensor, *args) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    net.zero_grad(set_to_none=True)
    out = net(x, *args)
    out = out if isinstance(out, list) else [out]
    loss = sum((o.float() * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() for o in out)
    loss.backward()
    return [o.detach() for o in out], {k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None}


def assert_same(a, b, rtol=0.0, atol=0.0):
    for x, y in zip(a[0], b[0], strict=True):
        torch.testing.assert_close(x, y, rtol=rtol, atol=atol)
    assert a[1].keys() == b[1].keys()
    for k in a[1]:
        scale = float(b[1][k].abs().max()) or 1.0
        torch.testing.assert_close(a[1][k] / scale, b[1][k] / scale, rtol=rtol, atol=atol, msg=k)


@pytest.mark.parametrize("style", CELL_STYLES)
@pytest.mark.parametrize("g", GENOTYPES, ids=lambda g: g.topology_string())
def test_inplace_relus_give_the_unrewritten_outputs_and_gradients(style, g):
    torch.manual_seed(0)
    net = build_network(g, config(style)).train()
    assert any(m.inplace for m in net.modules() if isinstance(m, nn.ReLU))
    ref = unrewritten(net)
    x = torch.randn(2, 2, *PATCH)
    assert_same(outputs_and_grads(net, x), outputs_and_grads(ref, x))
    assert net.state_dict().keys() == ref.state_dict().keys()
    assert count_parameters(net) == estimate_cost(g, config(style), PATCH).params


def rebuilt(net: nn.Module, build, **switches: bool) -> nn.Module:
    """`build()` with some fast paths off, holding `net`'s weights and mode."""
    with fast_paths_set(**switches):
        ref = build()
    ref.load_state_dict(net.state_dict())
    return ref.train(net.training)


def unfused(net: nn.Module, build) -> tuple[nn.Module, int]:
    """The same weights with the head's upsample -> conv run as two ops (the network before the rewrite)."""
    ref = rebuilt(net, build, fused_upsample=False)
    assert not any(getattr(m, "fused_upsample", False) for m in ref.modules())
    return ref, sum(bool(getattr(m, "fused_upsample", False)) for m in net.modules())


@pytest.mark.parametrize("strides", [((2, 2, 2),) * 4, ((1, 2, 2), (2, 2, 2), (2, 1, 2), (2, 2, 1))],
                         ids=["iso", "aniso"])
@pytest.mark.parametrize("g", GENOTYPES, ids=lambda g: g.topology_string())
def test_fused_upsample_conv_gives_the_unrewritten_outputs_and_gradients(g, strides):
    torch.manual_seed(0)
    cfg = NetworkConfig(in_channels=2, num_classes=3, stem_channels=4, level_channels=(8, 8, 16, 16),
                        strides=strides, cell_style="c2fnas")
    net = build_network(g, cfg).train()
    with torch.no_grad():  # non-zero biases and norm weights, so every path of the gradient is checked
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ref, n = unfused(net, lambda: build_network(g, cfg))
    assert n == 1 and net.head_expand.fused_upsample, "the head's expand is the one fused block"
    x = torch.randn(2, 2, *PATCH)
    assert_same(outputs_and_grads(net, x), outputs_and_grads(ref, x), rtol=1e-4, atol=1e-4)
    assert net.state_dict().keys() == ref.state_dict().keys()
    assert count_parameters(net) == estimate_cost(g, cfg, PATCH).params


@pytest.mark.parametrize("factors", [(1, 2, 2), (2, 2, 2), (2, 1, 2), (1, 1, 2)])
@pytest.mark.parametrize("size", [(3, 4, 5), (1, 2, 1)])
@pytest.mark.parametrize("layout", ["ncdhw", "ndhwc"])
def test_upsample_conv3d_is_upsample_then_conv_in_float64(factors, size, layout, monkeypatch):
    """Every border, axes of one voxel, a bias, both layouts: equal to rounding of float64, outputs
    and gradients."""
    from torch.nn import functional as F

    from c2fnas_auto.nas.ops import upsample_conv3d

    torch.manual_seed(0)
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    x = (x.contiguous(memory_format=CL) if layout == "ndhwc" else x).requires_grad_(True)
    w = torch.randn(4, 3, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    up = F.interpolate(x, size=[n * f for n, f in zip(size, factors)], mode="trilinear", align_corners=False)
    ref = F.conv3d(up, w, b, padding=1)
    if layout == "ndhwc":
        keep_channels_last(monkeypatch)
    got = upsample_conv3d(x, w, b, factors)
    if layout == "ndhwc" and min(size) > 1:
        assert got.is_contiguous(memory_format=CL) and not got.is_contiguous()
    g = torch.randn_like(ref)
    for a, c in zip(torch.autograd.grad(ref, [x, w, b], g), torch.autograd.grad(got, [x, w, b], g)):
        torch.testing.assert_close(a, c, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)


def test_fused_upsample_conv_matches_in_bf16_and_in_the_supernet():
    torch.manual_seed(0)
    net = build_network(reference_genotype(), config("c2fnas", deep_supervision=False)).eval()
    ref, _ = unfused(net, lambda: build_network(reference_genotype(), config("c2fnas", deep_supervision=False)))
    x = torch.randn(2, 2, *PATCH)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        a, b = net(x).float(), ref(x).float()
    assert (a - b).abs().max() <= 0.05 * b.abs().max()  # bf16 rounding, not a different function
    sn = build_supernet(reference_genotype().levels, config("c2fnas")).train()
    ref_sn, n = unfused(sn, lambda: build_supernet(reference_genotype().levels, config("c2fnas")))
    assert n == 1
    ops = ["3d", "p3d", "2d"] * 4
    assert_same(outputs_and_grads(sn, x, ops), outputs_and_grads(ref_sn, x, ops), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("layout", ["ncdhw", "ndhwc"])
@pytest.mark.parametrize("factors", [(1, 2, 2), (2, 2, 2), (2, 1, 2), (1, 1, 2), (1, 1, 1)])
@pytest.mark.parametrize("size", [(3, 4, 5), (1, 2, 1)])
def test_upsample_x2_is_trilinear_interpolation_in_float64(factors, size, layout):
    """Both borders of every axis, axes of one voxel: equal to float64 rounding, output and
    gradient; channels-last input gives channels-last output."""
    from torch.nn import functional as F

    from c2fnas_auto.nas.ops import upsample_x2

    torch.manual_seed(0)
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    x = (x.contiguous(memory_format=CL) if layout == "ndhwc" else x).requires_grad_(True)
    ref = F.interpolate(x, size=[n * f for n, f in zip(size, factors)], mode="trilinear", align_corners=False)
    got = upsample_x2(x, factors)
    assert got.is_contiguous(memory_format=CL if layout == "ndhwc" else torch.contiguous_format)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(ref)
    torch.testing.assert_close(torch.autograd.grad(got, x, g)[0], torch.autograd.grad(ref, x, g)[0],
                               rtol=1e-12, atol=1e-12)


def interpolating(net: nn.Module, build) -> tuple[nn.Module, int]:
    """The same weights with every Upsample through F.interpolate (the network before the rewrite)."""
    from c2fnas_auto.nas.ops import Upsample

    ref = rebuilt(net, build, axis_upsample=False)
    ups = [m for m in ref.modules() if isinstance(m, Upsample)]
    assert not any(m.fast for m in ups) and all(m.fast for m in net.modules() if isinstance(m, Upsample))
    return ref, len(ups)


@pytest.mark.parametrize("style", CELL_STYLES)
def test_axis_by_axis_upsampling_gives_the_interpolating_network_and_supernet(style):
    torch.manual_seed(0)
    cfg = NetworkConfig(in_channels=2, num_classes=3, stem_channels=4, level_channels=(8, 8, 16, 16),
                        strides=((1, 2, 2), (2, 2, 2), (2, 1, 2), (2, 2, 1)), cell_style=style)
    g = GENOTYPES[1]
    net = build_network(g, cfg).train()
    ref, n = interpolating(net, lambda: build_network(g, cfg))
    assert n >= 3, "the up steps (and the residual head) upsample"
    x = torch.randn(2, 2, *PATCH)
    assert_same(outputs_and_grads(net, x), outputs_and_grads(ref, x), rtol=1e-5, atol=1e-5)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        a, b = net.eval()(x)[0].float(), ref.eval()(x)[0].float()
    assert (a - b).abs().max() <= 0.05 * b.abs().max()  # bf16 rounding, not a different function
    sn = build_supernet(g.levels, cfg).train()
    ref_sn, _ = interpolating(sn, lambda: build_supernet(g.levels, cfg))
    assert_same(outputs_and_grads(sn, x, g.ops), outputs_and_grads(ref_sn, x, g.ops), rtol=1e-5, atol=1e-5)


def test_upsample_by_other_factors_interpolates():
    from torch.nn import functional as F

    from c2fnas_auto.nas.ops import Upsample

    up = Upsample((3.0, 1.0, 2.0))
    assert up.factors is None
    x = torch.randn(1, 2, 2, 3, 4)
    torch.testing.assert_close(up(x), F.interpolate(x, size=[6, 3, 8], mode="trilinear", align_corners=False),
                               rtol=0, atol=0)


def test_supernet_paths_with_inplace_relus_match_the_unrewritten_supernet():
    torch.manual_seed(0)
    net = build_supernet(reference_genotype().levels, config("c2fnas")).train()
    ref = unrewritten(net)
    x = torch.randn(2, 2, *PATCH)
    for ops in (["2d"] * 12, ["p3d"] * 12, ["3d", "p3d", "2d"] * 4):
        assert_same(outputs_and_grads(net, x, ops), outputs_and_grads(ref, x, ops))


CL = torch.channels_last_3d


def keep_channels_last(monkeypatch) -> list[bool]:
    """Make every conv with NDHWC input or weights return NDHWC, as oneDNN does in float32
    (PyTorch's float64 conv hands back NCDHW), so float64 runs the channels-last code; returns
    whether each conv's input was NDHWC (or of one channel)."""
    from torch.nn import functional as F

    from c2fnas_auto.nas.layout import is_channels_last

    seen: list[bool] = []
    conv3d = F.conv3d

    def conv(x, weight, *args, **kwargs):
        seen.append(is_channels_last(x) or x.shape[1] == 1)
        y = conv3d(x, weight, *args, **kwargs)
        return y.contiguous(memory_format=CL) if seen[-1] or is_channels_last(weight) else y

    monkeypatch.setattr(F, "conv3d", conv)
    return seen


@pytest.mark.parametrize("style", CELL_STYLES)
@pytest.mark.parametrize("g", GENOTYPES, ids=lambda g: g.topology_string())
def test_channels_last_network_equals_the_plain_one_in_float64(style, g, monkeypatch):
    """Channels-last instance norm, upsampling and fused head, outputs and gradients, every conv
    fed NDHWC (float32 cannot tell: a ReLU input within rounding of 0 flips its gradient)."""
    torch.manual_seed(0)
    cfg = NetworkConfig(in_channels=2, num_classes=3, stem_channels=4, level_channels=(8, 8, 16, 16),
                        strides=((1, 2, 2), (2, 2, 2), (2, 1, 2), (2, 2, 1)), cell_style=style)
    ref = build_network(g, cfg).train().double()
    with torch.no_grad():  # non-zero biases and norm weights, so every path of the gradient is checked
        for p in ref.parameters():
            p.add_(0.1 * torch.randn_like(p))
    net = prepare_network(copy.deepcopy(ref), ExecutionOptions(channels_last=True))
    x = torch.randn(2, 2, *PATCH, dtype=torch.float64)
    want = outputs_and_grads(ref, x)
    seen = keep_channels_last(monkeypatch)
    assert_same(outputs_and_grads(net, x), want, rtol=1e-10, atol=1e-10)
    assert len(seen) > 1 and all(seen[1:]), "a conv after the first (which reads the data as given) got NCDHW"


@pytest.fixture(params=[1, 2], ids=["1-thread", "2-threads"])
def threads(request):
    """PyTorch picks other conv kernels on one thread (see ops.single_thread_fp32_channels_last)."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.mark.parametrize("style", CELL_STYLES)
def test_channels_last_float32_keeps_the_layout_and_the_weights_names(style, threads):
    from c2fnas_auto.nas.layout import InstanceNorm, is_channels_last

    torch.manual_seed(0)
    net = build_network(reference_genotype(), config(style)).train()
    ref = copy.deepcopy(net)
    prepare_network(net, ExecutionOptions(channels_last=True))
    layouts: dict[str, bool] = {}

    def record(name):
        def hook(module, inp):
            layouts.setdefault(name, is_channels_last(inp[0]) or inp[0].shape[1] == 1)
        return hook

    for name, m in net.named_modules():
        if isinstance(m, (nn.Conv3d, InstanceNorm)):
            m.register_forward_pre_hook(record(name))
    x = torch.randn(2, 2, *PATCH)  # two channels: the first conv reads NCDHW data and writes NDHWC
    got, want = outputs_and_grads(net, x), outputs_and_grads(ref, x)
    truth = outputs_and_grads(copy.deepcopy(ref).double(), x.double())
    assert not layouts.pop("stem.0.conv") and layouts and all(layouts.values()), \
        "after the first conv, every conv and norm gets NDHWC input: no transposes between them"
    for a, b, t in zip(got[0], want[0], truth[0], strict=True):  # as close to float64 as the NCDHW network
        assert (a.double() - t).abs().max() <= 2 * (b.double() - t).abs().max() + 1e-5
    assert got[1].keys() == want[1].keys()
    with torch.no_grad():  # bf16 in NDHWC: rounding, not another function (this tiny network with its
        fp32 = ref.eval()(x)  # one-voxel deep levels magnifies bf16's error: compare with NCDHW's)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            a, b = net.eval()(x).float(), ref(x).float()
    assert (a - fp32).abs().mean() <= 2.5 * (b - fp32).abs().mean()
    assert {k: v.shape for k, v in net.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    fresh = build_network(reference_genotype(), config(style))
    fresh.load_state_dict(net.state_dict())  # a channels-last checkpoint loads into a plain network


@pytest.mark.parametrize("kernel", [(1, 1, 1), (3, 1, 1)])
def test_in_plane_unit_conv_is_conv3d_and_keeps_channels_last(kernel):
    from torch.nn import functional as F

    from c2fnas_auto.nas.ops import in_plane_unit_conv

    torch.manual_seed(0)
    x = torch.randn(2, 5, 3, 4, 6, dtype=torch.float64).contiguous(memory_format=CL).requires_grad_(True)
    w = torch.randn(7, 5, *kernel, dtype=torch.float64, requires_grad=True)
    b = torch.randn(7, dtype=torch.float64, requires_grad=True)
    pad = kernel[0] // 2
    ref = F.conv3d(x, w, b, padding=(pad, 0, 0))
    got = in_plane_unit_conv(x, w, b, pad)
    assert got.is_contiguous(memory_format=CL) and not got.is_contiguous()
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(ref)
    for a, c in zip(torch.autograd.grad(got, [x, w, b], g), torch.autograd.grad(ref, [x, w, b], g)):
        torch.testing.assert_close(a, c, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("size", [(3, 4, 5), (1, 3, 1), (2, 1, 2)])
def test_channels_last_instance_norm_is_pytorchs(dtype, affine, size):
    """Outputs and gradients of input, weight and bias against PyTorch's instance norm in
    float64 of the same (rounded) input, with a mean far from 0 and axes of one voxel. (With
    two voxels the input gradient is only eps's: rounding, which no implementation gets right
    relatively.) bf16: within its own rounding (outputs and gradients are bf16)."""
    from torch.nn import functional as F

    from c2fnas_auto.nas.layout import InstanceNorm

    torch.manual_seed(0)
    norm = InstanceNorm(6, affine=affine)
    if affine:
        with torch.no_grad():
            norm.weight.normal_()
            norm.bias.normal_()
    if dtype == torch.float64:
        norm = norm.double()
    x = (torch.randn(2, 6, *size, dtype=torch.float64) * 3 + 20).to(dtype)
    g = torch.randn(2, 6, *size, dtype=torch.float64).to(dtype)
    x64 = x.double().requires_grad_(True)
    w64, b64 = ((norm.weight.detach().double().requires_grad_(True), norm.bias.detach().double().requires_grad_(True))
                if affine else (None, None))
    ref = F.instance_norm(x64, weight=w64, bias=b64, eps=norm.eps)
    want = torch.autograd.grad(ref, [x64] + ([w64, b64] if affine else []), g.double())
    xc = x.contiguous(memory_format=CL).requires_grad_(True)
    got = norm(xc)
    assert got.is_contiguous(memory_format=CL) and not got.is_contiguous() and got.dtype == dtype
    grads = torch.autograd.grad(got, [xc] + ([norm.weight, norm.bias] if affine else []),
                                g.contiguous(memory_format=CL))
    tol = {torch.float64: 1e-10, torch.float32: 2e-4, torch.bfloat16: 3e-2}[dtype]
    torch.testing.assert_close(got.double() / ref.abs().max(), ref / ref.abs().max(), rtol=tol, atol=tol)
    for a, b in zip(grads, want, strict=True):
        torch.testing.assert_close(a.double() / b.abs().max(), b / b.abs().max(), rtol=tol, atol=tol)


def test_compiled_network_matches_and_keeps_state_dict_keys_and_the_probe():
    torch.manual_seed(0)
    net = build_network(reference_genotype(), config("c2fnas")).train()
    ref = unrewritten(net)
    keys = list(net.state_dict())
    calls = []

    def compiler(fn):  # dynamo with the eager backend: checks the tracing without a C++ build
        calls.append(fn)
        return torch.compile(fn, backend="eager")

    prepare_network(net, ExecutionOptions(compile=True, channels_last=False), compiler=compiler)
    assert len(calls) == 1 and list(net.state_dict()) == keys
    x = torch.randn(2, 2, *PATCH)
    with DeadHeadProbe(net) as probe:  # installed after compiling: the classifier runs eagerly
        got = outputs_and_grads(net, x)
    assert probe.fraction() == probe.fraction()  # not NaN: the hook ran
    assert_same(got, outputs_and_grads(ref, x), rtol=1e-5, atol=1e-5)


def test_supernet_compiles_cell_by_cell():
    net = build_supernet(reference_genotype().levels, config("c2fnas"))
    names = []
    prepare_network(net, ExecutionOptions(compile=True), compiler=lambda fn: names.append(fn) or fn)
    assert len(names) == len(net.cells)
    net(torch.randn(2, 2, *PATCH), ["2d"] * 12)


def test_a_compiled_supernet_keeps_a_graph_per_cell_and_op_beyond_dynamos_default_limit():
    """The cells share one forward: past dynamo's default 8 graphs the rest ran eagerly."""
    import random

    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    sn = build_supernet(reference_genotype().levels, config("c2fnas")).train()
    prepare_network(sn, ExecutionOptions(compile=True), compiler=lambda fn: torch.compile(fn, backend="eager"))
    rng = random.Random(0)
    x = torch.randn(2, 2, *PATCH)
    for _ in range(6):
        sn(x, [rng.choice(["2d", "3d", "p3d"]) for _ in range(12)])
    assert counters["stats"]["unique_graphs"] > 8
    assert not any("recompile" in k.lower() for k in counters["unimplemented"]), "no cell fell back to eager"
    torch._dynamo.reset()


def test_compile_failure_at_first_call_falls_back_to_eager_with_one_line(capsys):
    net = build_network(reference_genotype(), config("c2fnas", deep_supervision=False)).eval()

    def broken(fn):
        def call(*a, **k):
            raise RuntimeError("no C++ compiler found\nlong traceback text")
        return call

    prepare_network(net, ExecutionOptions(compile=True), compiler=broken)
    x = torch.randn(1, 2, *PATCH)
    with torch.no_grad():
        out = net(x)
        again = net(x)  # the second call goes straight to eager
    torch.testing.assert_close(out, again)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "torch.compile failed" in err[0] and "no C++ compiler found" in err[0]


def test_compile_refused_up_front_is_one_line_and_the_network_runs(capsys):
    net = build_network(reference_genotype(), config("c2fnas", deep_supervision=False)).eval()

    def refuses(fn):
        raise RuntimeError("torch.compile is not supported on Python 3.99+")

    prepare_network(net, ExecutionOptions(compile=True), compiler=refuses)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not available here" in err[0]
    with torch.no_grad():
        assert net(torch.randn(1, 2, *PATCH)).shape == (1, 3, *PATCH)


def test_genuine_network_errors_still_raise_under_compile():
    from c2fnas_auto.nas.config import NetworkConfigError

    net = build_network(reference_genotype(), config("c2fnas", deep_supervision=False))
    prepare_network(net, ExecutionOptions(compile=True), compiler=lambda fn: torch.compile(fn, backend="eager"))
    with pytest.raises(NetworkConfigError):
        net(torch.randn(1, 5, *PATCH))


def test_compile_of_a_foreign_module_is_one_clear_error():
    from c2fnas_auto.nas.execution import ExecutionError

    with pytest.raises(ExecutionError, match="not a c2fnas network"):
        prepare_network(nn.Conv3d(1, 1, 1), ExecutionOptions(compile=True))
