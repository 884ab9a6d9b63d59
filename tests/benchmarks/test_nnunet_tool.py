"""The study's nnU-Net arm finds nnU-Net's console scripts as the benchmark rows do."""

from __future__ import annotations

import pytest

from benchmarks.study import nnunet_arm
from c2fnas_auto.errors import C2FNASError


def test_a_missing_nnunet_script_is_a_one_line_error(monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(C2FNASError, match=r"nnUNetv2_no_such_tool not found next to .* the study's nnU-Net arm needs it"):
        nnunet_arm._tool("nnUNetv2_no_such_tool")


def test_a_script_on_path_is_used(monkeypatch, tmp_path):
    monkeypatch.setattr("shutil.which", lambda name: str(tmp_path / name))
    assert nnunet_arm._tool("nnUNetv2_no_such_tool") == [str(tmp_path / "nnUNetv2_no_such_tool")]
