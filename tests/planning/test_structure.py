"""Structure: preprocessing never imports planning, shared names are defined once."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "c2fnas_auto"


def _imports(module_dir: Path) -> set[str]:
    out = set()
    for f in module_dir.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                out.add(node.module)
            elif isinstance(node, ast.Import):
                out.update(a.name for a in node.names)
    return out


def test_preprocessing_does_not_import_planning():
    """planning -> preprocessing only (parallel_map and case_seed live in utils)."""
    bad = sorted(m for m in _imports(PACKAGE / "preprocessing") if m.startswith("c2fnas_auto.planning"))
    assert bad == []


@pytest.mark.parametrize("name", ["DEFAULT_PLANS_NAME", "PLANS_FILE", "IMAGE_ENDINGS", "total_downsampling",
                                  "case_seed", "parallel_map"])
def test_defined_once(name):
    places = []
    for f in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.Assign):
                targets = [t.id for t in node.targets if isinstance(t, ast.Name)]
            elif isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.col_offset == 0:
                targets = [node.name]
            if name in targets:
                places.append(f"{f.relative_to(PACKAGE)}:{node.lineno}")
    assert len(places) <= 1, places


def test_benchmark_network_widths_come_from_the_planner(monkeypatch):
    """benchmarks build 'the reference network at base width b' with the planner's width rule."""
    monkeypatch.syspath_prepend(str(PACKAGE.parent))  # `pytest` without `python -m`: repo root for benchmarks
    from benchmarks.rows.sliding_window import reference_network
    from c2fnas_auto.planning.planner import level_channels_for

    for base in (4, 8):
        _, config, _ = reference_network(1, 2, base)
        assert config.level_channels == level_channels_for(base) and config.stem_channels == base
