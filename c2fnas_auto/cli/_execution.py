"""The execution flags c2fnas_train, c2fnas_predict and c2fnas_search share (nas/execution.py says what they do)."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, TypeVar

from c2fnas_auto.nas.execution import PRECISIONS, ExecutionOptions

T = TypeVar("T")


def add_execution_flags(p: argparse.ArgumentParser) -> None:
    """--precision, --compile and --channels-last, with the same meaning in training, prediction and the search."""
    g = p.add_argument_group("execution (speed; the weights and their names are the same under every choice)")
    g.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="compute precision: fp32, bf16 (autocast, CPU and CUDA) or fp16 (autocast with a grad "
                        "scaler, CUDA only); default fp16 on CUDA, fp32 on the CPU")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the network (first steps are slower while it compiles; falls back to "
                        "eager execution with a one-line message where compilation is not supported)")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="keep activations channels-last (NDHWC); default on the CPU, where oneDNN runs it "
                        "faster, off on CUDA")


def execution_from_args(args: argparse.Namespace) -> ExecutionOptions:
    """The flags of `add_execution_flags` as the options TrainerOptions, Predictor and SearchSettings take."""
    return ExecutionOptions.from_namespace(args)


def settings_from_args(cls: type[T], args: argparse.Namespace, **overrides: Any) -> T:
    """A settings dataclass from parsed flags whose `dest` is the field's name (a field without a
    flag keeps its default; `execution` comes from the execution flags); `overrides` for the
    fields a flag does not give as is."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    values["execution"] = execution_from_args(args)
    return cls(**{**values, **overrides})
