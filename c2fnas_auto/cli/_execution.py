"""The execution flags c2fnas_train, c2fnas_predict and c2fnas_search share (nas/execution.py says what they do)."""

from __future__ import annotations

import argparse

from c2fnas_auto.nas.execution import PRECISIONS


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


def execution_kwargs(args: argparse.Namespace) -> dict:
    """The flags as keyword arguments of TrainerOptions, Predictor and SearchSettings."""
    return {"precision": args.precision, "compile": args.compile, "channels_last": args.channels_last}
