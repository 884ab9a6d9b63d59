"""Constants and assertions shared by the reliability tests."""

from __future__ import annotations

import re
from pathlib import Path

from c2fnas_auto.utils.testing import CliResult

BROKEN_ID = 97  # the damaged-on-purpose raw task of `raw_root`
E2E_ID = 96  # the end-to-end task of `trained_task`


def task_folder(root: Path, task_id: int = BROKEN_ID) -> Path:
    """The one raw Task<id>_* folder under root/raw."""
    (folder,) = [p for p in (root / "raw").iterdir() if p.name.startswith(f"Task{task_id:02d}_")]
    return folder


def require_ok(res: CliResult) -> CliResult:
    assert res.returncode == 0, res.describe()
    assert "Traceback" not in res.stderr, res.describe()
    return res


def assert_user_error(res: CliResult, needles: list[str], problem: str) -> str:
    """rc 2, no traceback, exactly one message line containing every needle and the problem."""
    assert "Traceback" not in res.stderr, res.describe()
    assert res.returncode == 2, res.describe()
    lines = res.message_lines()
    assert len(lines) == 1, f"expected one message line:\n{res.describe()}"
    line = lines[0]
    assert line.startswith(f"c2fnas_{res.name}: error: "), line
    for needle in needles:
        assert needle in line, f"{needle!r} not named in: {line}"
    assert re.search(problem, line, re.IGNORECASE), f"problem /{problem}/ not stated in: {line}"
    return line
