"""Plans: JSON round trip, validation messages, load errors."""

from __future__ import annotations

import json

import pytest

from c2fnas_auto.errors import PlansError
from c2fnas_auto.planning.fingerprint import synthetic_fingerprint
from c2fnas_auto.planning.planner import plan_experiment
from c2fnas_auto.planning.plans import Plans


@pytest.fixture(scope="module")
def plans() -> Plans:
    fp = synthetic_fingerprint("Task99_Demo", {0: "CT"}, {"background": 0, "organ": 1},
                               [[2.5, 0.8, 0.8]] * 4, [[40, 96, 96]] * 4)
    return plan_experiment(fp, None, gpu_memory_gb=1.0, base_channels=8)


def test_round_trip(plans, tmp_path):
    path = tmp_path / "plans.json"
    plans.save(path)
    loaded = Plans.load(path)
    assert loaded.to_dict() == plans.to_dict()
    assert loaded.channel_names == {0: "CT"}
    assert loaded.genotype.levels == plans.genotype.levels
    config = loaded.network_config()
    assert [list(s) for s in config.strides] == plans.network["strides"]
    assert all(p % d == 0 for p, d in zip(loaded.patch_size, config.total_downsampling()))


@pytest.mark.parametrize("field,value,words", [
    ("transpose_forward", [0, 0, 1], "transpose_forward"),
    ("transpose_backward", [2, 0, 1], "transpose_backward"),
    ("patch_size", [33, 96, 96], "divisible"),
    ("batch_size", 0, "batch_size"),
    ("num_classes", 5, "num_classes"),
    ("target_spacing", [1.0, -1.0, 1.0], "target_spacing"),
    ("labels", {"background": 0, "organ": 2}, "consecutive"),
])
def test_validate_names_the_field(plans, field, value, words):
    bad = plans.copy()
    setattr(bad, field, value)
    with pytest.raises(PlansError, match=words):
        bad.validate()


def test_validate_normalization(plans):
    bad = plans.copy()
    bad.normalization = [{"scheme": "minmax", "use_nonzero_mask": False}]
    with pytest.raises(PlansError, match=r"normalization\[0\]\.scheme"):
        bad.validate()


def test_load_errors_name_the_file(plans, tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(PlansError, match="nope.json"):
        Plans.load(missing)
    broken = tmp_path / "broken.json"
    broken.write_text("{ not json")
    with pytest.raises(PlansError, match="broken.json"):
        Plans.load(broken)
    d = plans.to_dict()
    d["schema_version"] = 99
    old = tmp_path / "old.json"
    old.write_text(json.dumps(d))
    with pytest.raises(PlansError, match="schema_version"):
        Plans.load(old)
    d = plans.to_dict()
    del d["patch_size"]
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps(d))
    with pytest.raises(PlansError, match="patch_size"):
        Plans.load(partial)
    d = plans.to_dict()
    d["genotype"]["levels"][0] = 4
    badgeno = tmp_path / "badgeno.json"
    badgeno.write_text(json.dumps(d))
    with pytest.raises(PlansError, match="badgeno.json"):
        Plans.load(badgeno)
