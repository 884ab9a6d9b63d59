"""Atomic file writing and safe reading.

Everything the pipeline writes (plans, states, arrays, checkpoints, images) goes
through these helpers: write to a temporary file in the same folder, flush, fsync,
then rename, so a killed process never leaves a half-written file behind under the
final name.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from c2fnas_auto.errors import InputError
from c2fnas_auto.utils.bounded_json import MAX_JSON_BYTES, parse_json

TMP_MARKER = ".tmp-"


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` on success.

    `suffix` defaults to the full suffix of `path` (e.g. '.nii.gz') so writers that
    choose the format from the extension (SimpleITK, numpy) still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=path.name.split(".")[0] + TMP_MARKER, suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        _fsync_file(tmp_path)
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 100, **savefig_kwargs: Any) -> Path:
    """Write a matplotlib figure as PNG atomically (a reader never sees half a file) and
    close it, so a long run that plots every epoch does not keep figures alive."""
    # start-up: matplotlib costs about 1 s; the Agg backend is chosen before pyplot loads
    import matplotlib.pyplot as plt

    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi, format="png", **savefig_kwargs)
    plt.close(fig)
    return path


def _fsync_file(path: Path) -> None:
    try:
        with open(path, "rb+") as fh:
            os.fsync(fh.fileno())
    except OSError:
        pass


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> None:
    atomic_write_text(path, json.dumps(_jsonable(obj), indent=indent, sort_keys=False) + "\n")


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, array, allow_pickle=False)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    # start-up: utils/ is imported by CLIs whose --help must not load torch (several seconds)
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def create_json_once(path: str | os.PathLike, obj: Any) -> bool:
    """Write `obj` to `path` only if no file exists there; True if this call wrote it.

    Concurrent callers (two folds starting together) race safely: the temporary file
    is hard-linked into place, which fails if another process got there first.
    """
    path = Path(path)
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + TMP_MARKER, dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(_jsonable(obj), indent=2) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
    finally:
        Path(tmp).unlink(missing_ok=True)


def load_json(path: str | os.PathLike, what: str = "JSON file", max_bytes: int = MAX_JSON_BYTES) -> Any:
    """Read JSON; a missing, malformed, oversized or too deeply nested file raises InputError
    naming the file (utils/bounded_json.py: the one parser for files from others)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: {what} not found")
    size = path.stat().st_size
    if size > max_bytes:  # before reading it into memory
        raise InputError(f"{path}: {what} is {size} bytes, over the limit of {max_bytes}")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    return parse_json(raw, path, what, max_bytes=max_bytes)


def remove_stale_temporaries(folder: str | os.PathLike) -> int:
    """Delete temporary files left by killed writers in `folder`; returns the count."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    n = 0
    for p in folder.iterdir():
        if TMP_MARKER in p.name and p.is_file():
            p.unlink(missing_ok=True)
            n += 1
    return n


def _jsonable(obj: Any) -> Any:
    """Convert numpy scalars/arrays, tuples and Paths so json.dumps accepts them."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj
