"""Reading and writing torch files without ever running code from them.

`torch.load(weights_only=False)` unpickles arbitrary objects, so a checkpoint from
someone else (a model zip, a shared search folder, a tampered `checkpoint_latest.pth`)
could run any code on load. Every file this project writes holds tensors and plain data
only (`plain_data` enforces it on save), so every load here is `weights_only=True`. Files
that need unpickling (written by older code with numpy scalars or objects inside) are
refused, unless the command was started with `--trust-pickled-checkpoint`
(`trusting_pickled_files`), the one place where `weights_only=False` appears.

torch is imported inside the functions: utils/ is imported by CLIs whose --help must not
load torch (several seconds).
"""

from __future__ import annotations

import pickle
import sys
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from c2fnas_auto.errors import InputError
from c2fnas_auto.utils.io import atomic_torch_save
from c2fnas_auto.utils.tensor_storage import check_tensor_storage

TRUST_FLAG = "--trust-pickled-checkpoint"
_trust = {"pickled": False}


@contextmanager
def trusting_pickled_files(enabled: bool = True) -> Iterator[None]:
    """While active, files that need unpickling are loaded (with a warning naming each one).

    A process-wide switch on purpose: the flag is the user's decision for the whole
    command, and threading it through every loader of every stage would couple them."""
    before = _trust["pickled"]
    _trust["pickled"] = bool(enabled)
    try:
        yield
    finally:
        _trust["pickled"] = before


def plain_data(value: Any, where: str = "value") -> Any:
    """`value` as tensors, dicts, lists, tuples, str, int, float, bool and None only.

    numpy scalars and arrays become Python numbers and lists, Paths strings; anything
    else is a bug in the writer (TypeError), caught at save time rather than at load."""
    # start-up: see the module docstring
    import torch

    if value is None or type(value) in (bool, int, float, str) or isinstance(value, torch.Tensor):
        return value  # exact types: np.float64 subclasses float but pickles as a numpy object
    if isinstance(value, dict):
        out = {_plain_key(k, where): plain_data(v, f"{where}.{k}") for k, v in value.items()}
        if isinstance(value, OrderedDict):  # a state_dict: keep its type and module versions
            out = OrderedDict(out)
            if getattr(value, "_metadata", None) is not None:
                out._metadata = plain_data(value._metadata, f"{where}._metadata")  # type: ignore[attr-defined]
        return out
    if isinstance(value, (list, tuple)):
        items = [plain_data(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return plain_data(value.tolist(), where)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{where}: {type(value).__name__} is not tensors or plain data (cannot be loaded safely)")


def _plain_key(key: Any, where: str) -> Any:
    if type(key) in (str, int):
        return key
    if isinstance(key, (np.integer, np.str_)):
        return key.item()
    raise TypeError(f"{where}: dict key {key!r} is not a str or int")


def save_plain(obj: Any, path: str | Path) -> None:
    """Atomic torch.save of `obj` after checking it is tensors and plain data."""
    atomic_torch_save(plain_data(obj, Path(path).name), path)


def load_torch_file(path: str | Path, what: str = "checkpoint", map_location: Any = "cpu",
                    trustable: bool = True) -> Any:
    """Load tensors and plain data; a file needing unpickling is refused (InputError) unless trusted.

    `trustable=False` for files this project never wrote with objects inside (the supernet):
    those are refused even under the trust flag."""
    # start-up: see the module docstring
    import torch

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: {what} not found")
    try:
        loaded = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:  # objects beyond tensors and plain data (or not a torch file at all)
        return _pickled(path, what, map_location, trustable)
    except Exception as exc:  # truncated or foreign files: one line for the user
        raise InputError(f"{path}: cannot read {what} ({type(exc).__name__}: {_first_line(exc)})") from None
    check_tensor_storage(loaded, path, what)  # before anything is sized from the file's shapes
    return loaded


def _pickled(path: Path, what: str, map_location: Any, trustable: bool) -> Any:
    """A file that needs unpickling: loaded under the trust flag, else refused naming what it holds."""
    if _trust["pickled"] and trustable:
        return _load_trusted(path, what, map_location)
    found = _unsafe_globals(path)
    if found is None:
        raise InputError(f"{path}: cannot read {what} (not a file written by torch.save)")
    holds = f"pickled objects ({', '.join(found[:3])})" if found else "pickled data that is not tensors"
    advice = f"; only if you wrote this file yourself (older c2fnas-auto), pass {TRUST_FLAG}" if trustable else ""
    raise InputError(f"{path}: refused to load {what}: it holds {holds} that could run code on load{advice}")


def _load_trusted(path: Path, what: str, map_location: Any) -> Any:
    """The opt-in path of `--trust-pickled-checkpoint`: full unpickling, announced per file."""
    # start-up: see the module docstring
    import torch

    print(f"warning: {path}: loading a pickled {what} because of {TRUST_FLAG}; this runs any code the file "
          "holds", file=sys.stderr, flush=True)
    try:
        loaded = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # noqa: BLE001 - anything from a foreign pickle: one line
        raise InputError(f"{path}: cannot read {what} ({type(exc).__name__}: {_first_line(exc)})") from None
    check_tensor_storage(loaded, path, what)
    return loaded


def _unsafe_globals(path: Path) -> list[str] | None:
    """Names of the non-allowlisted objects the file's pickle refers to (read without running
    it); None when the file is not a torch.save file at all."""
    # start-up: see the module docstring
    import torch

    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # noqa: BLE001 - not a zip-format torch file
        return None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
