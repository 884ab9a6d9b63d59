"""Which raw files a derived result was made from, so a changed file is never silently reused.

Preprocessed cases and the fingerprint are derived from a case's image and label files.
Their markers record each source file's size and modification time (nanoseconds); a rerun
compares them with the files as they are now. Size + mtime, not a hash: a stat costs
nothing while hashing would read every voxel of every case on every rerun, and any normal
replacement of a file (a new download, an edited label saved) changes its mtime. A
replacement that keeps both size and mtime on purpose (`cp -p`, `rsync -t` of a same-size
file) is not noticed; documentation/reference/reliability.md says so.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from c2fnas_auto.data.dataset import Case


def case_sources(case: Case, root: str | os.PathLike) -> dict[str, list[int]]:
    """{path relative to the task folder: [size in bytes, mtime in ns]} of the case's files.

    Relative paths keep the record valid when the whole raw folder is moved or copied with
    its times (`cp -a`); a missing file is recorded as [-1, -1] (the integrity check names it)."""
    out: dict[str, list[int]] = {}
    for f in [*case.image_files, *([case.label_file] if case.label_file is not None else [])]:
        path = Path(f)
        try:
            key = path.relative_to(root).as_posix()
        except ValueError:  # a file outside the task folder: keep its full path
            key = path.as_posix()
        try:
            st = path.stat()
            out[key] = [int(st.st_size), int(st.st_mtime_ns)]
        except OSError:
            out[key] = [-1, -1]
    return out


def changed_cases(recorded: dict[str, Any], current: dict[str, dict[str, list[int]]]) -> list[str]:
    """Case ids whose current sources differ from `recorded` (case id -> sources), in `current`'s order."""
    return [cid for cid, src in current.items() if recorded.get(cid) != src]
