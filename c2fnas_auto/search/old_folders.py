"""Moving a search left where earlier 0.1.0 development versions kept it into the results folder
(removed in 0.3, with `files.SEARCH_DIR`)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from c2fnas_auto.paths import preprocessed_dir
from c2fnas_auto.search.files import SEARCH_DIR, STATE_FILE


def adopt_old_folder(task_name: str, search_dir: Path) -> str:
    """On --continue, move a search left at the old location (preprocessed/<task>/search)
    to the results folder; returns a note for the report ('' when nothing moved)."""
    old = preprocessed_dir(task_name) / SEARCH_DIR
    if (search_dir / STATE_FILE).exists() or not (old / STATE_FILE).is_file():
        return ""
    search_dir.parent.mkdir(parents=True, exist_ok=True)
    if search_dir.exists():
        for item in old.iterdir():
            shutil.move(str(item), str(search_dir / item.name))
        old.rmdir()
    else:
        shutil.move(str(old), str(search_dir))
    note = f"moved the search state from {old} to {search_dir}"
    print(f"c2fnas_search: {note}", file=sys.stderr)
    return note
