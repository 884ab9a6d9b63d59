"""How a network runs: numeric precision, torch.compile and memory layout, as options users pick.

Training (`training/loop.py`), prediction (`inference/`) and the search share these helpers so
that one choice means the same thing everywhere. Nothing here changes the weights or their
names: a checkpoint trained with any option loads and predicts with any other.
"""

from __future__ import annotations

import sys
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable

import torch
from torch import nn

from c2fnas_auto.errors import C2FNASError

PRECISIONS = ("fp32", "bf16", "fp16")


class ExecutionError(C2FNASError):
    """An execution option this device cannot honour (one line, names the option)."""


@dataclass(frozen=True)
class ExecutionOptions:
    """How a network runs, picked once by the user and passed whole to training, prediction and
    the search, so that one choice means the same thing everywhere. None means "the device's
    default"; `resolved(device)` fills those in. Frozen: a run never changes its caller's choice."""

    precision: str | None = None  # fp32 / bf16 / fp16; None: fp16 AMP on CUDA, fp32 elsewhere
    compile: bool = False  # torch.compile the network (the supernet cell by cell)
    channels_last: bool | None = None  # channels-last (NDHWC) activations; None: the device's default

    def resolved(self, device: torch.device) -> "ExecutionOptions":
        """The options a run on `device` uses (an impossible explicit choice is one clear error)."""
        return replace(self, precision=check_precision(self.precision, device),
                       channels_last=check_channels_last(self.channels_last, device))

    def to_dict(self) -> dict[str, Any]:
        """The three options under their own names, as the search record and checkpoints store them."""
        return {"precision": self.precision, "compile": self.compile, "channels_last": self.channels_last}

    @classmethod
    def from_namespace(cls, args: Any) -> "ExecutionOptions":
        """From parsed CLI flags (or any object) with attributes named like the fields."""
        return cls(precision=args.precision, compile=bool(args.compile), channels_last=args.channels_last)


EXECUTION_FIELDS = tuple(ExecutionOptions().to_dict())


def flat_asdict(settings: Any) -> dict[str, Any]:
    """`asdict` of a settings dataclass holding an `execution` field, with the execution options
    at the top level: the files written before they were grouped keep their keys."""
    d = asdict(settings)
    d.update(d.pop("execution"))
    return d


def default_precision(device: torch.device) -> str:
    """What a run gets when the user says nothing: fp16 AMP on CUDA (nnU-Net's choice), fp32 elsewhere."""
    return "fp16" if torch.device(device).type == "cuda" else "fp32"


def check_precision(precision: str | None, device: torch.device) -> str:
    """The precision to use on `device`; an impossible explicit choice is one clear error.

    fp16 needs CUDA's grad scaler and fast half kernels: on a CPU it is refused rather than
    silently changed, since the user asked for it by name.
    """
    device = torch.device(device)
    if precision is None:
        return default_precision(device)
    if precision not in PRECISIONS:
        raise ExecutionError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        raise ExecutionError(f"--precision fp16 needs a CUDA device (this run is on {device.type}); "
                             "use --precision bf16 or fp32")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ExecutionError(f"--precision bf16: {torch.cuda.get_device_name(device)} has no bf16 support; "
                             "use --precision fp16 or fp32")
    if precision == "bf16" and device.type == "cpu" and (slow := cpu_bf16_slow_reason()):
        _warn_once("bf16-cpu", f"--precision bf16: {slow}; --precision fp32 is faster here")
    return precision


def cpu_bf16_is_fast() -> bool | None:
    """Whether this torch build runs bf16 convolutions on this CPU with oneDNN; None where torch
    does not say. Without it bf16 conv3d falls back to `slow_conv3d` (torch 2.13.0+cpu on an AVX2
    CPU: 14x fp32's time for a training step, 32x for inference), which a user asking for bf16
    "for speed" would not expect: `check_precision` warns."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without the probe (or without oneDNN ops)
        return None


def cpu_bf16_slow_reason() -> str | None:
    """Why bf16 is slow on this CPU, in one phrase (the CLI's warning and the benchmarks' skip
    reason say the same); None where it is fast or torch does not say."""
    if cpu_bf16_is_fast() is not False:
        return None
    return (f"torch {torch.__version__} has no fast bf16 convolution on this CPU (oneDNN bf16 unsupported), "
            "so convolutions fall back to a reference kernel, measured 14-32x slower than fp32")


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """Autocast for bf16/fp16; fp32 runs plainly."""
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(torch.device(device).type, dtype=dtype)


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """A scaler that is active only for fp16 (bf16 has fp32's range and needs none)."""
    return torch.amp.GradScaler("cuda", enabled=precision == "fp16" and torch.device(device).type == "cuda")


def default_channels_last(device: torch.device) -> bool:
    """What a run gets when the user says nothing: channels-last on the CPU, where an fp32 training
    step took 0.51-0.93 of the NCDHW time at every width on 1 and 2 threads and an inference
    window 0.86 (documentation/studies/channels_last.md); the default layout on CUDA, where it has not been
    measured."""
    return torch.device(device).type == "cpu"


def check_channels_last(channels_last: bool | None, device: torch.device) -> bool:
    """The layout a run uses on `device`: the user's choice, else the device's default."""
    return default_channels_last(device) if channels_last is None else bool(channels_last)


def to_channels_last(network: nn.Module) -> nn.Module:
    """Store the conv weights channels-last (NDHWC): oneDNN's and cuDNN's fast layout.

    The network's first conv then produces channels-last activations and every later op keeps
    that layout (nas/layout.py). Values and parameter names are unchanged (only strides differ).
    """
    # torch's stubs list no memory_format overload for Module.to, which accepts it at run time
    return network.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]


def _warn(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr, flush=True)


_WARNED: set[str] = set()  # check_precision runs for every step context; a run says each thing once


def _warn_once(key: str, text: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        _warn(text)


class _FallbackCompiled:
    """The module's compiled call, which reverts to eager execution once if compiling fails.

    torch.compile is lazy: an unsupported platform (no C++ compiler, an unsupported Python)
    only shows up at the first call. Then a one-line message is printed and eager runs;
    a genuine error of the network (a wrong input shape) also fails in eager and is raised.
    """

    def __init__(self, module: nn.Module, compiled: Callable, name: str):
        self.module, self.compiled, self.name, self.failed = module, compiled, name, False

    def __call__(self, *args, **kwargs):
        if not self.failed:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as exc:  # any compiler failure: report it in one line, run eagerly
                self.failed = True
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
                _warn(f"--compile: torch.compile failed for {self.name} ({type(exc).__name__}: {first}); "
                      "running without compilation")
                self.module._compiled_fallback = None
        return self.module._call_eager(*args, **kwargs)


def compile_module(module: "Compilable", name: str, compiler: Callable = torch.compile) -> bool:
    """Compile `module` in place (its state_dict keys stay the same). False, with a one-line
    message, where torch.compile is not available at all."""
    try:
        compiled = compiler(module._call_eager)
    except Exception as exc:  # torch.compile refused up front (e.g. unsupported Python)
        _warn(f"--compile: torch.compile is not available here ({type(exc).__name__}: "
              f"{(str(exc).strip().splitlines() or [''])[0][:200]}); running without compilation")
        return False
    module._compiled_fallback = _FallbackCompiled(module, compiled, name)
    return True


class Compilable(nn.Module):
    """A module whose forward (`_forward_impl`, defined by subclasses) can be swapped for a
    compiled one without renaming its weights
    (torch.compile's wrapper would prefix every state_dict key with `_orig_mod.`)."""

    _compiled_fallback: _FallbackCompiled | None = None

    def _call_eager(self, *args, **kwargs):
        return self._forward_impl(*args, **kwargs)

    def forward(self, *args, **kwargs):
        if self._compiled_fallback is not None:
            return self._compiled_fallback(*args, **kwargs)
        return self._forward_impl(*args, **kwargs)

    def compile_units(self) -> list[tuple["Compilable", str]]:
        """The modules `prepare_network` compiles: the whole network by default; the supernet
        compiles its cells instead, since its path (a list of op names) changes every step and
        would recompile a whole-network graph each time."""
        return [(self, type(self).__name__)]


def allow_recompiles(n: int) -> None:
    """Let dynamo keep `n` graphs per code object. The supernet's cells share one forward, and
    each (cell, op, train/eval) is a graph of its own: under dynamo's default limit of 8 every
    cell after the eighth graph silently ran eagerly. Raises the process-wide limit, never lowers it."""
    # start-up: torch._dynamo takes seconds to import and only a compiled network needs it
    import torch._dynamo

    for name in ("recompile_limit", "cache_size_limit"):
        if getattr(torch._dynamo.config, name, n) < n:
            setattr(torch._dynamo.config, name, n)


def prepare_network(network: nn.Module, execution: ExecutionOptions = ExecutionOptions(),
                    compiler: Callable = torch.compile) -> nn.Module:
    """Apply the layout and compile options to a c2fnas network in place; returns it.
    `channels_last` None: the default of the device the network's weights are on."""
    if check_channels_last(execution.channels_last, next(network.parameters()).device):
        to_channels_last(network)
    if execution.compile:
        units = network.compile_units() if isinstance(network, Compilable) else None
        if not units:
            raise ExecutionError(f"--compile: {type(network).__name__} is not a c2fnas network")
        if len(units) > 1:
            allow_recompiles(8 * len(units))
        for module, name in units:
            if not compile_module(module, name, compiler):
                break
    return network
