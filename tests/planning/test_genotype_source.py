"""Replanning keeps a searched genotype (B3) and finds it in the search's results (B10)."""

from __future__ import annotations

import json
import logging

import pytest

from c2fnas_auto.errors import PlansError
from c2fnas_auto.nas.genotype import Genotype, reference_genotype
from c2fnas_auto.paths import search_results_dir
from c2fnas_auto.planning.pipeline import plan_and_preprocess, resolve_genotype
from c2fnas_auto.planning.plans import Plans

FAST = dict(gpu_memory_gb=0.25, base_channels=4, preprocess=False, verify=False)
SEARCHED = Genotype(levels=[1, 2, 3, 4, 4, 4, 3, 2, 1, 1, 1, 1], ops=["3d", "p3d", "2d"] * 4,
                    provenance={"source": "c2fnas_search", "source_task": "Task98_Synthetic"})


def _plans_path(task):
    return task.preprocessed_dir / "plans.json"


def _search_into_plans(task):
    plans = Plans.load(_plans_path(task))
    plans.genotype = SEARCHED
    plans.save(_plans_path(task))


def test_schema_bump_keeps_the_searched_genotype(copy_task):
    """The old code caught the load error and replanned with the reference genotype."""
    _search_into_plans(copy_task)
    d = json.loads(_plans_path(copy_task).read_text())
    d["schema_version"] = 0
    _plans_path(copy_task).write_text(json.dumps(d))
    plans = plan_and_preprocess(98, **FAST)
    assert (plans.genotype.levels, plans.genotype.ops) == (SEARCHED.levels, SEARCHED.ops)
    assert Plans.load(_plans_path(copy_task)).genotype.provenance["source"] == "c2fnas_search"


def test_unreadable_plans_without_winner_file_stops_and_keeps_the_file(copy_task):
    _plans_path(copy_task).write_text('{"genotype": {"levels": [1, 2')  # cut mid-write by another tool
    before = _plans_path(copy_task).read_bytes()
    with pytest.raises(PlansError) as info:
        plan_and_preprocess(98, **FAST)
    msg = str(info.value)
    assert "plans.json" in msg and "--genotype FILE" in msg and "genotype.json" in msg and "\n" not in msg
    assert _plans_path(copy_task).read_bytes() == before


def test_unreadable_plans_falls_back_to_the_search_winner_file(copy_task, caplog):
    winner = search_results_dir(copy_task.task_name) / "genotype.json"
    winner.parent.mkdir(parents=True)
    SEARCHED.save(winner)
    _plans_path(copy_task).write_text("{ not json")
    with caplog.at_level(logging.WARNING):
        plans = plan_and_preprocess(98, **FAST)
    assert plans.genotype.levels == SEARCHED.levels
    assert str(winner) in caplog.text


def test_plans_deleted_replanning_finds_the_winner_in_results(copy_task):
    """B10: preprocessed data (plans.json with it) deleted; the search's results survive."""
    winner = search_results_dir(copy_task.task_name) / "genotype.json"
    winner.parent.mkdir(parents=True)
    SEARCHED.save(winner)
    _plans_path(copy_task).unlink()
    plans = plan_and_preprocess(98, **FAST)
    assert plans.genotype.ops == SEARCHED.ops and plans.genotype.provenance["source"] == "c2fnas_search"


def test_old_search_location_is_read(copy_task):
    """Searches made before the move left their winner in preprocessed/<task>/search/report.json."""
    old = copy_task.preprocessed_dir / "search"
    old.mkdir()
    (old / "report.json").write_text(json.dumps({"stages": {}, "genotype": SEARCHED.to_dict()}))
    _plans_path(copy_task).unlink()
    assert plan_and_preprocess(98, **FAST).genotype.levels == SEARCHED.levels
    # the new location wins over the old one
    newer = Genotype(levels=[1, 1, 2, 2, 3, 3, 2, 2, 1, 1, 1, 1], ops=["2d"] * 12)
    winner = search_results_dir(copy_task.task_name) / "genotype.json"
    winner.parent.mkdir(parents=True)
    newer.save(winner)
    _plans_path(copy_task).unlink()
    assert plan_and_preprocess(98, **FAST).genotype.levels == newer.levels


def test_broken_winner_file_names_the_file(copy_task):
    winner = search_results_dir(copy_task.task_name) / "genotype.json"
    winner.parent.mkdir(parents=True)
    winner.write_text('{"levels": [1, 2, 3]}')
    _plans_path(copy_task).unlink()
    with pytest.raises(PlansError, match="genotype.json.*--genotype FILE"):
        plan_and_preprocess(98, **FAST)


def test_never_planned_nor_searched_uses_the_reference(copy_task):
    _plans_path(copy_task).unlink()
    assert plan_and_preprocess(98, **FAST).genotype.levels == reference_genotype().levels


def test_genotype_from_a_task_whose_plans_are_gone(copy_task):
    winner = search_results_dir(copy_task.task_name) / "genotype.json"
    winner.parent.mkdir(parents=True)
    SEARCHED.save(winner)
    _plans_path(copy_task).unlink()
    assert resolve_genotype(genotype_from=98).levels == SEARCHED.levels
    winner.unlink()
    with pytest.raises(PlansError, match="no genotype found .*plans.json.*genotype.json"):
        resolve_genotype(genotype_from=98)
