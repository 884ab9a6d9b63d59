"""The GPU check's dry run: every part runs on the CPU at toy sizes and lands in the JSON.

The script is run only where a GPU is lent, rarely; this keeps it in step with the CLIs it
drives (a renamed search option once made its search part exit 2)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import gpu_check  # noqa: E402


def test_dry_run_measures_every_part(tmp_path, monkeypatch):
    for var in ("C2FNAS_raw", "C2FNAS_preprocessed", "C2FNAS_results"):
        monkeypatch.setenv(var, os.environ.get(var, ""))  # make_task points them into the workdir; undone after
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    out = tmp_path / "gpu_check.json"
    assert gpu_check.main(["--dry-run", "--workdir", str(tmp_path / "work"), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["dry_run"] is True and result["task"]["batch"] >= 1
    assert [t["backend"] for t in result["training"]] == ["device", "batchgenerators"]
    assert all(t["iterations_per_second"] > 0 and t["cost_model_training_bytes"] > 0 for t in result["training"])
    options = {t["option"]: t for t in result["training_options"]}
    assert "needs a CUDA device" in options["fp16"]["skipped"]  # fp16 is CUDA-only: recorded, not run
    for name in ("bf16_compile", "bf16_channels_last"):
        assert options[name]["iterations_per_second"] > 0 and options[name]["cost_model_training_bytes"] > 0
    windows = {w["option"]: w for w in result["sliding_window"]}
    assert windows["bf16_compile"]["best_seconds"] > 0 and "skipped" in windows["fp16"]
    groups = result["op_profile"]["sides"]["ours_fp32"]["step"]["groups"]
    assert groups["conv forward"] > 0 and groups["conv backward"] > 0
    s = result["search"]
    assert s["returncode"] == 0
    assert s["seconds_per_coarse_candidate"] > 0 and s["seconds_per_supernet_epoch"] > 0
    assert s["projected_total_hours"] > 0
