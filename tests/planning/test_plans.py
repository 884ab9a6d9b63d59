"""Plans: JSON round trip, validation messages, load errors."""

from __future__ import annotations

import dataclasses
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
    assert config is loaded.network and config == plans.network
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


def test_network_is_one_typed_field(plans, tmp_path):
    from c2fnas_auto.nas.config import NetworkConfig

    path = tmp_path / "plans.json"
    plans.save(path)
    loaded = Plans.load(path)
    assert isinstance(loaded.network, NetworkConfig)
    assert loaded.network_config() is loaded.network  # the method older callers use still works
    assert json.loads(path.read_text())["network"] == loaded.network.to_dict()
    assert loaded.base_channels == loaded.network.stem_channels == 8


@pytest.mark.parametrize("edit,words", [
    (lambda d: d["network"].update(stem_channels=0), "network: stem_channels"),
    (lambda d: d["network"].update(colour="red"), "unknown network config key"),
    (lambda d: d.update(network=[1, 2]), "network"),
    (lambda d: d["network"].update(level_channels=5), "network malformed"),
    (lambda d: d.update(base_channels=16), "base_channels 16 disagrees"),
])
def test_bad_network_names_the_file(plans, tmp_path, edit, words):
    d = plans.to_dict()
    edit(d)
    path = tmp_path / "net.json"
    path.write_text(json.dumps(d))
    with pytest.raises(PlansError, match=words) as info:
        Plans.load(path)
    assert "net.json" in str(info.value)


def test_validate_rejects_a_network_that_is_not_a_config(plans):
    bad = plans.copy()
    bad.network = bad.network.to_dict()
    with pytest.raises(PlansError, match="NetworkConfig"):
        bad.validate()
    other = plans.copy()
    other.network = dataclasses.replace(other.network, num_classes=7)
    with pytest.raises(PlansError, match="network.num_classes"):
        other.validate()
