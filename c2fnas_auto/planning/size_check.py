"""Sizes from a file are checked against the machine before anything is allocated.

A plans file (or the plans inside a checkpoint from someone else) says how large a patch,
a batch and the network widths are. An edited patch of 1024x2048x2048 used to surface as
a numpy out-of-memory traceback in the data loader. Here the cost model (nas/cost.py)
estimates what training needs at those sizes, and the allocations a prediction makes for
sure are counted, and both are compared with what the device and this machine have; over
it is one line naming the file and the sizes, before any network or batch is built.
"""

from __future__ import annotations

import os
from math import prod
from pathlib import Path
from typing import Any, Sequence

import torch

from c2fnas_auto.errors import InputError
from c2fnas_auto.nas.cost import estimate_cost

GIB = 2 ** 30
FLOAT_BYTES = 4


def host_memory_bytes() -> int | None:
    """Physical memory of this machine, or None where the OS does not say."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, OSError, ValueError):  # not POSIX: no check rather than a wrong one
        return None


def device_memory_bytes(device: torch.device) -> tuple[int | None, str]:
    """(total memory, what it is) of the device a network runs on."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return int(props.total_memory), f"the memory of {props.name}"
    return host_memory_bytes(), "this machine's memory"


def check_training_fits(source: str | Path, genotype: Any, config: Any, patch: Sequence[int], batch: int,
                        num_channels: int, device: torch.device, ranks: int = 1) -> None:
    """Training at `patch` x `batch` with this genotype and network config fits `device` and the
    host (the loader's batch arrays); else InputError naming `source` (the plans file).
    `batch` is the global batch; each of `ranks` processes holds its share."""
    patch = [int(p) for p in patch]
    batch = -(-int(batch) // max(1, int(ranks)))
    sizes = f"patch {patch}, batch {batch}, widths {list(config.level_channels)}"
    advice = ("lower patch_size / batch_size (c2fnas_train --patch-size / --batch-size) or replan with "
              "c2fnas_plan_and_preprocess --gpu-memory-gb")
    loader = batch * (num_channels + 1) * prod(patch) * FLOAT_BYTES  # one batch of data + labels, float32
    host = host_memory_bytes()
    if host is not None and loader > host:
        raise InputError(f"{source}: {sizes}: one training batch alone needs {loader / GIB:.1f} GiB, more than "
                         f"this machine's {host / GIB:.1f} GiB; {advice}")
    need = estimate_cost(genotype, config, patch, batch_size=batch, amp=device.type == "cuda").training_bytes
    have, what = device_memory_bytes(device)
    if have is not None and need > have:
        raise InputError(f"{source}: {sizes}: estimated training memory {need / GIB:.1f} GiB exceeds "
                         f"{what} ({have / GIB:.1f} GiB); {advice}")


def check_prediction_fits(source: str | Path, patch: Sequence[int], num_channels: int, num_classes: int,
                          tile_batch: int) -> None:
    """The sliding window's sure allocations at the plans' patch (a batch of input tiles, the
    class scores of one tile and its Gaussian weights) fit this machine; else InputError
    naming `source` (the checkpoint whose plans say so)."""
    patch = [int(p) for p in patch]
    need = prod(patch) * FLOAT_BYTES * (tile_batch * (num_channels + num_classes) + 1)
    host = host_memory_bytes()
    if host is not None and need > host:
        raise InputError(f"{source}: its plans' patch {patch} needs {need / GIB:.1f} GiB per sliding-window step "
                         f"(tile batch {tile_batch}), more than this machine's {host / GIB:.1f} GiB")
