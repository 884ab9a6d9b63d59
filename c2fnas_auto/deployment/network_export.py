"""A trained network as a file that runs without this package: TorchScript or ONNX.

The network is traced (its forward has no data-dependent control flow) after swapping our
size-computing upsampling for a scale-factor one, so the file accepts any input whose sides
are divisible by the network's total downsampling, not only the traced patch. Every export
is checked at once: the file is loaded back and its output on a random patch is compared
with PyTorch's; a difference above the tolerance is an error, not a warning.
"""

from __future__ import annotations

import copy
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import nn

from c2fnas_auto.deployment.errors import DeploymentError
from c2fnas_auto.nas.ops import Upsample
from c2fnas_auto.utils.io import atomic_path

# Stated tolerance of an export: max |exported - PyTorch| <= ATOL + RTOL * max |PyTorch| over the logits.
ATOL = 1e-4
RTOL = 1e-4
ONNX_OPSET = 17
FORMATS = ("torchscript", "onnx")


@dataclass
class ExportCheck:
    """What the export-time check measured (written next to the file as JSON)."""

    format: str
    output_shape: list[int]
    max_abs_difference: float
    max_abs_reference: float
    tolerance: float
    argmax_agreement: float

    @property
    def passed(self) -> bool:
        return self.max_abs_difference <= self.tolerance

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed, "atol": ATOL, "rtol": RTOL}


class ScaleUpsample(nn.Module):
    """Trilinear upsampling by a fixed factor: traces to a shape-independent graph.

    For the integer factors our networks use, the output equals `nas.ops.Upsample`'s."""

    def __init__(self, scale: Sequence[float]):
        super().__init__()
        self.scale = [float(s) for s in scale]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.interpolate(x, scale_factor=self.scale, mode="trilinear", align_corners=False)


def exportable_copy(network: nn.Module) -> nn.Module:
    """A deep copy in eval mode on the CPU with every `Upsample` replaced by `ScaleUpsample`."""
    net = copy.deepcopy(network).to("cpu").eval()
    for parent in net.modules():
        for name, child in list(parent.named_children()):
            if isinstance(child, Upsample):
                setattr(parent, name, ScaleUpsample(child.scale))
    return net


class AxisPermuted(nn.Module):
    """Run `network` on a permuted input and permute its output back.

    A MONAI pipeline hands images over in (x, y, z) order; our networks expect the plans'
    transposed (z, y, x) order because the 2D kernels lie on a fixed axis."""

    def __init__(self, network: nn.Module, spatial_order: Sequence[int]):
        super().__init__()
        self.network = network
        self.forward_dims = [0, 1] + [2 + int(a) for a in spatial_order]
        inverse = [0] * 3
        for i, a in enumerate(spatial_order):
            inverse[int(a)] = i
        self.backward_dims = [0, 1] + [2 + a for a in inverse]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x.permute(self.forward_dims).contiguous()).permute(self.backward_dims).contiguous()


def example_input(in_channels: int, patch_size: Sequence[int], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, int(in_channels), *[int(p) for p in patch_size], generator=g)


@contextmanager
def _quiet() -> Iterator[None]:
    """Tracing warns about shape checks it freezes and about its own deprecation: expected here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def trace(network: nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    with _quiet(), torch.no_grad():
        return torch.jit.trace(network, example, check_trace=False)


def compare(fmt: str, reference: torch.Tensor, exported: torch.Tensor) -> ExportCheck:
    if tuple(reference.shape) != tuple(exported.shape):
        raise DeploymentError(f"{fmt} export: output shape {list(exported.shape)} differs from PyTorch's "
                              f"{list(reference.shape)}")
    ref_max = float(reference.abs().max())
    return ExportCheck(fmt, list(reference.shape), float((reference - exported).abs().max()), ref_max,
                       ATOL + RTOL * ref_max, float((reference.argmax(1) == exported.argmax(1)).float().mean()))


def save_torchscript(network: nn.Module, example: torch.Tensor, out_file: Path) -> ExportCheck:
    """Trace `network` (already exportable), write it atomically, load it back and check it."""
    out_file = Path(out_file)
    traced = trace(network, example)
    with atomic_path(out_file, suffix=".ts") as tmp:
        torch.jit.save(traced, str(tmp))
        check = check_torchscript(network, tmp, example)
        _require(check, out_file)
    return check


def check_torchscript(network: nn.Module, ts_file: Path, example: torch.Tensor) -> ExportCheck:
    loaded = torch.jit.load(str(ts_file), map_location="cpu")
    with torch.no_grad():
        return compare("torchscript", network(example), loaded(example))


def save_onnx(network: nn.Module, example: torch.Tensor, out_file: Path) -> ExportCheck:
    """ONNX with dynamic batch and spatial axes, checked with onnxruntime."""
    try:
        # optional dependency: the deploy extra
        import onnx  # noqa: F401  (torch's exporter needs it)
    except ImportError:
        raise DeploymentError("ONNX export needs the 'onnx' package: pip install 'c2fnas-auto[deploy]'") from None
    out_file = Path(out_file)
    axes = {0: "batch", 2: "z", 3: "y", 4: "x"}
    with atomic_path(out_file, suffix=".onnx") as tmp:
        with _quiet(), torch.no_grad():
            torch.onnx.export(network, (example,), str(tmp), dynamo=False, input_names=["image"],
                              output_names=["logits"], dynamic_axes={"image": axes, "logits": axes},
                              opset_version=ONNX_OPSET)
        check = check_onnx(network, tmp, example)
        _require(check, out_file)
    return check


def check_onnx(network: nn.Module, onnx_file: Path, example: torch.Tensor) -> ExportCheck:
    try:
        # optional dependency: the deploy extra
        import onnxruntime
    except ImportError:
        raise DeploymentError("checking an ONNX export needs 'onnxruntime': pip install 'c2fnas-auto[deploy]'"
                              ) from None
    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: example.numpy()})[0]
    with torch.no_grad():
        return compare("onnx", network(example), torch.from_numpy(out))


def _require(check: ExportCheck, out_file: Path) -> None:
    if not check.passed:
        raise DeploymentError(f"{out_file}: the {check.format} export differs from PyTorch by "
                              f"{check.max_abs_difference:.3g} (tolerance {check.tolerance:.3g}); nothing written")


def export_network(network: nn.Module, in_channels: int, patch_size: Sequence[int], fmt: str, out_file: Path,
                   seed: int = 0) -> ExportCheck:
    """Write `network` as `fmt` to `out_file`, checked on a random (1, C, *patch) input."""
    if fmt not in FORMATS:
        raise DeploymentError(f"unknown network format '{fmt}' (choose from {', '.join(FORMATS)})")
    net = exportable_copy(network)
    example = example_input(in_channels, patch_size, seed)
    save = save_torchscript if fmt == "torchscript" else save_onnx
    return save(net, example, Path(out_file))
