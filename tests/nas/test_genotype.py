import json
from pathlib import Path

import pytest

from c2fnas_auto.errors import GenotypeError
from c2fnas_auto.nas.genotype import OPS, Genotype, reference_genotype

REPO = Path(__file__).resolve().parents[2]
REF_LEVELS = [1, 1, 2, 2, 3, 4, 3, 3, 2, 1, 1, 1]
REF_OPS = ["2d", "p3d", "3d", "3d", "3d", "2d", "3d", "3d", "p3d", "3d", "2d", "3d"]


def test_reference_genotype_matches_design_and_shipped_file():
    g = reference_genotype()
    assert g.levels == REF_LEVELS and g.ops == REF_OPS
    shipped = json.loads((REPO / "plans" / "c2fnas_panc_genotype.json").read_text())
    package = json.loads((REPO / "c2fnas_auto" / "resources" / "c2fnas_panc_genotype.json").read_text())
    assert shipped == package
    assert Genotype.load(REPO / "plans" / "c2fnas_panc_genotype.json") == g
    # the other public reading of cells 6 and 7 ships next to it
    alt = Genotype.load(REPO / "plans" / "c2fnas_panc_genotype_alt.json")
    assert alt.levels == REF_LEVELS and alt.ops[5:7] == ["3d", "2d"]
    assert alt.ops[:5] == REF_OPS[:5] and alt.ops[7:] == REF_OPS[7:]


def test_round_trip_keeps_provenance(tmp_path):
    g = Genotype(REF_LEVELS, REF_OPS, provenance={"task": "Task07_Pancreas", "score": 0.8})
    g.save(tmp_path / "g.json")
    back = Genotype.load(tmp_path / "g.json")
    assert back == g and back.provenance["score"] == 0.8
    assert Genotype.from_dict(g.to_dict()) == g


def test_unknown_top_level_keys_become_provenance():
    g = Genotype.from_dict({"levels": REF_LEVELS, "ops": REF_OPS, "searched_on": "Task07"})
    assert g.provenance == {"searched_on": "Task07"}


def test_load_from_plans_file(tmp_path):
    plans = {"task_name": "Task07", "patch_size": [96, 96, 96], "genotype": reference_genotype().to_dict()}
    (tmp_path / "plans.json").write_text(json.dumps(plans))
    assert Genotype.load(tmp_path / "plans.json").levels == REF_LEVELS
    plans["genotype"] = None
    (tmp_path / "empty.json").write_text(json.dumps(plans))
    with pytest.raises(GenotypeError, match="holds no genotype"):
        Genotype.load(tmp_path / "empty.json")
    (tmp_path / "other.json").write_text(json.dumps({"foo": 1}))
    with pytest.raises(GenotypeError, match="neither a genotype"):
        Genotype.load(tmp_path / "other.json")


@pytest.mark.parametrize("levels, ops, message", [
    (REF_LEVELS[:11], REF_OPS, "levels has 11 entries, expected 12"),
    (REF_LEVELS[:-1] + [0], REF_OPS, "levels must be integers 1..4"),
    ([1, 1, 2, 2, 3, 5, 3, 3, 2, 1, 1, 1], REF_OPS, "levels must be integers 1..4"),
    ([1, 1, 3, 3, 3, 4, 3, 3, 2, 1, 1, 1], REF_OPS, "a step of more than one level"),
    ([3, 3, 3, 4, 3, 3, 2, 2, 2, 1, 1, 1], REF_OPS, "after the stem \\(level 1\\)"),
    ([1, 2, 1, 2, 3, 4, 3, 3, 2, 1, 1, 1], REF_OPS, "must be U-shaped"),
    ([1, 1, 2, 2, 3, 4, 3, 3, 2, 1, 2, 1], REF_OPS, "must be U-shaped"),
    ([1, 1, 2, 2, 3, 4, 3, 3, 2, 2, 2, 2], REF_OPS, "must end on level 1"),
    (REF_LEVELS, REF_OPS[:-1] + ["5d"], "unknown op '5d'"),
    (REF_LEVELS, REF_OPS[:-2], "ops has 10 entries, expected 12"),
])
def test_each_rule_has_its_own_message(levels, ops, message):
    with pytest.raises(GenotypeError, match=message) as info:
        Genotype(levels, ops).validate()
    assert "\n" not in str(info.value)


def test_from_dict_names_source_and_missing_key():
    with pytest.raises(GenotypeError, match="x.json: missing key 'ops'"):
        Genotype.from_dict({"levels": REF_LEVELS}, source="x.json")


def test_cells_and_levels_are_parameters():
    g = Genotype([1, 2, 3, 2, 1], ["2d"] * 5, num_levels=3, num_cells=5).validate()
    assert g.deepest_index == 2
    with pytest.raises(GenotypeError, match="integers 1..2"):
        Genotype([1, 2, 3, 2, 1], ["2d"] * 5, num_levels=2, num_cells=5).validate()
    assert set(OPS) == {"2d", "3d", "p3d"}
