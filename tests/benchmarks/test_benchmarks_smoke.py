"""Smoke test of the benchmark runner: toy sizes, rows that need no peer, and a
well-formed results file and table. Benchmarks assert nothing about speed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `pytest` without `python -m` does not put the repo root on sys.path
    sys.path.insert(0, str(ROOT))


def test_tiny_run_writes_wellformed_results_and_table(tmp_path, monkeypatch):
    import benchmarks.common as common
    from benchmarks import run

    real = common.have_module
    # pretend nnU-Net is absent so the peer row takes its skip path quickly wherever this runs
    monkeypatch.setattr(common, "have_module", lambda name: False if name == "nnunetv2" else real(name))
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nhand-written text that must survive\n")
    rc = run.main(["--tiny", "--only", "memory", "preprocess", "--out", str(tmp_path / "results"),
                   "--doc", str(doc), "--workdir", str(tmp_path / "work")])
    assert rc == 0

    files = list((tmp_path / "results").glob("*-tiny.json"))
    assert len(files) == 1
    results = json.loads(files[0].read_text())
    assert results["schema_version"] == 1 and results["profile"] == "tiny"
    for key in ("cpu_model", "cpu_cores", "torch", "gpu", "versions"):
        assert key in results["machine"]
    rows = {r["row"]: r for r in results["rows"]}
    assert list(rows) == ["preprocess", "memory"]  # the runner's fixed row order

    pre = rows["preprocess"]
    assert pre["status"] == "skipped" and "nnunetv2 not installed" in pre["note"]

    mem = rows["memory"]
    assert mem["status"] == "ok", mem["note"]
    patches = mem["details"]["patches"]
    assert [p["patch"] for p in patches] == [[16, 32, 32], [32, 32, 32], [32, 48, 48]]
    for p in patches:
        assert p["measured_saved_tensor_bytes"] > 0 and p["estimated_activation_bytes"] > 0
    # bigger patches save more activations: the measurement is real, not a constant
    measured = [p["measured_saved_tensor_bytes"] for p in patches]
    assert measured == sorted(measured) and measured[0] < measured[-1]
    assert isinstance(mem["summary"]["ratio"], float)

    text = doc.read_text()
    assert "hand-written text that must survive" in text
    assert "| 5. Memory estimate |" in text and "| 1. Plan + preprocess | skipped |" in text
    assert text.count("<!-- BEGIN GENERATED") == 1

    # a second run replaces the generated section instead of appending another one
    assert run.main(["--tiny", "--only", "memory", "--out", str(tmp_path / "results"), "--doc", str(doc),
                     "--workdir", str(tmp_path / "work")]) == 0
    text = doc.read_text()
    assert text.count("<!-- BEGIN GENERATED") == 1
    # --only merges into the same day's file: the skipped row from the first run is kept
    again = json.loads(files[0].read_text())
    assert [r["row"] for r in again["rows"]] == ["preprocess", "memory"]
