"""Measured memory, to check the analytic cost model against reality.

`saved_activation_bytes` counts what autograd keeps for the backward pass (unique
storages, parameters excluded) with `torch.autograd.graph.saved_tensors_hooks`; it
runs anywhere, including the CPU test suite. `cuda_training_peak_bytes` measures a
whole SGD step on a GPU, for benchmarks.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn


def saved_activation_bytes(network: nn.Module, x: torch.Tensor,
                           forward_fn: Callable[[nn.Module, torch.Tensor], object] | None = None) -> int:
    """Bytes of the tensors autograd saves for backward in one forward pass of `x`."""
    param_ptrs = {p.untyped_storage().data_ptr() for p in network.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        ptr = st.data_ptr()
        if ptr not in param_ptrs and ptr not in seen:
            seen[ptr] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = forward_fn(network, x) if forward_fn is not None else network(x)
    del out
    return int(sum(seen.values()))


def cuda_training_peak_bytes(network: nn.Module, x: torch.Tensor, amp: bool = True) -> int:
    """Peak CUDA memory of one SGD step (momentum) on `x`, after a warm-up step."""
    device = x.device
    opt = torch.optim.SGD(network.parameters(), lr=1e-3, momentum=0.99, nesterov=True)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, enabled=amp):
            out = network(x)
            if isinstance(out, (list, tuple)):
                out = out[0]
            loss = out.float().mean()
        loss.backward()
        opt.step()

    step()
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    return int(torch.cuda.max_memory_allocated(device))
