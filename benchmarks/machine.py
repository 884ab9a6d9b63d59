"""Who measured what where: the machine and software a results file belongs to."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from importlib import metadata
from typing import Any

from benchmarks.common import repo_root


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gb() -> float | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024 ** 2, 1)
    except OSError:
        pass
    return None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo_root(), capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info() -> dict[str, Any]:
    import torch

    gpu = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        gpu = {"name": props.name, "memory_gb": round(props.total_memory / 1024 ** 3, 1),
               "count": torch.cuda.device_count()}
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "hostname": platform.node(),
        "cpu_model": _cpu_model(),
        "cpu_cores": cores,
        "memory_gb": _memory_gb(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
        "versions": {name: _version(name) for name in ("c2fnas-auto", "nnunetv2", "monai", "batchgenerators",
                                                       "batchgeneratorsv2", "numpy", "SimpleITK")},
        "git_commit": _git_commit(),
    }


def machine_slug(info: dict[str, Any]) -> str:
    """A short file-name-safe machine name: '<cores>core-<cpu>[-<gpu>]'."""
    cpu = re.sub(r"[^a-z0-9]+", "-", info["cpu_model"].lower()).strip("-")[:24] or "cpu"
    slug = f"{info['cpu_cores']}core-{cpu}"
    if info.get("gpu"):
        slug += "-" + re.sub(r"[^a-z0-9]+", "-", info["gpu"]["name"].lower()).strip("-")[:24]
    return slug
