"""Every tensor read from someone else's file must own the memory its shape claims.

A torch file stores each tensor as (storage, offset, shape, strides). Shape checks alone
trust the strides: `torch.zeros(()).expand(4096, 4096, 3, 3, 3)` saves one float but has
the shape of 1.8 GB of weights, so a network config sized to match passes every shape
check and is then built for real. Here each tensor must be dense (its strides a
permutation of a contiguous layout: channels-last weights qualify, expanded or
overlapping ones do not) and its storage must hold `offset + numel` elements, so the
bytes a file's tensors describe are the bytes the file holds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from c2fnas_auto.errors import InputError


def _tensors(value: Any, where: str) -> Iterator[tuple[str, Any]]:
    """(name, tensor) of every tensor inside nested dicts, lists and tuples (no recursion)."""
    # start-up: utils/ is imported by CLIs whose --help must not load torch (several seconds)
    import torch

    stack = [(where, value)]
    while stack:
        name, item = stack.pop()
        if isinstance(item, torch.Tensor):
            yield name, item
        elif isinstance(item, dict):
            stack.extend((f"{name}.{k}" if name else str(k), v) for k, v in item.items())
        elif isinstance(item, (list, tuple)):
            stack.extend((f"{name}[{i}]", v) for i, v in enumerate(item))


def is_dense(tensor: Any) -> bool:
    """No two elements share memory and no gaps: sorted by stride, each stride is the
    product of the smaller dimensions' sizes (size-1 dimensions may have any stride)."""
    expected = 1
    for stride, size in sorted((s, n) for n, s in zip(tensor.shape, tensor.stride()) if n > 1):
        if stride != expected:
            return False
        expected *= size
    return True


def check_tensor_storage(value: Any, path: Path, what: str = "checkpoint") -> None:
    """InputError naming the first tensor in `value` that is not dense or whose storage
    holds fewer bytes than its shape needs."""
    for name, t in _tensors(value, ""):
        if t.numel() == 0:
            continue
        if not is_dense(t):
            raise InputError(f"{path}: {what} tensor '{name}' of shape {list(t.shape)} has strides "
                             f"{list(t.stride())}: its elements share memory (an expanded tensor), refused")
        need = (t.storage_offset() + t.numel()) * t.element_size()
        have = t.untyped_storage().nbytes()
        if have < need:
            raise InputError(f"{path}: {what} tensor '{name}' of shape {list(t.shape)} needs {need} bytes, its "
                             f"storage holds {have}, refused")
