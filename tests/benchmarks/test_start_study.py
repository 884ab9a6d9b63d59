"""The start study harness: variants change what they say and nothing else, the measured
`linear_classifier` variant is the package's default head, the summary pairs jobs by
genotype and seeds, and a tiny run stores every job and resumes without redoing one."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.study import start  # noqa: E402
from benchmarks.study.start_report import summarise  # noqa: E402
from c2fnas_auto.nas.config import NetworkConfig  # noqa: E402
from c2fnas_auto.nas.genotype import reference_genotype  # noqa: E402
from c2fnas_auto.nas.network import build_network  # noqa: E402


def _config(**kw) -> NetworkConfig:
    return NetworkConfig(1, 3, stem_channels=4, level_channels=(4, 8, 8, 16), classifier="relu", **kw)


def _relus(net) -> tuple[int, int]:
    kinds = [type(m) for m in net.modules()]
    return kinds.count(nn.ReLU), kinds.count(nn.LeakyReLU)


def test_surgery_changes_only_what_the_variant_names():
    g = reference_genotype()
    torch.manual_seed(0)
    base = build_network(g, _config())
    n_relu = _relus(base)[0]
    assert n_relu > 10
    net = build_network(g, _config())
    start.VARIANTS["leaky_all"].surgery(net)
    assert _relus(net) == (0, n_relu)
    net = build_network(g, _config())
    start.VARIANTS["head_bias_leaky"].surgery(net)
    assert _relus(net) == (n_relu - 3, 3) and net.head_classifier.conv.bias is not None
    torch.manual_seed(0)
    net = build_network(g, _config())
    start.VARIANTS["he_norm_free"].surgery(net)
    changed = {k for k, v in net.state_dict().items() if not torch.equal(v, base.state_dict()[k])}
    assert changed and all(k.endswith("conv.weight") for k in changed)
    # the 1x1x1 units of the wiring, the classifier, and the first conv of a p3d pair (its norm
    # comes after the second conv)
    assert all(k.split(".")[-3] in ("pre", "post", "second", "head_classifier") or ".ops.p3d.0." in k
               for k in changed)
    assert any(".ops.p3d.0." in k for k in changed) and not any(".ops.3d." in k for k in changed)


def test_linear_classifier_variant_is_the_package_default_head():
    """What the study measured as `linear_classifier` is what `classifier="linear"` builds."""
    g = reference_genotype()
    torch.manual_seed(0)
    measured = build_network(g, _config())
    start.VARIANTS["linear_classifier"].surgery(measured)
    package = build_network(g, dataclasses.replace(_config(), classifier="linear"))
    assert NetworkConfig(1, 3).classifier == "linear"  # the default
    package.load_state_dict(measured.state_dict())  # same keys and shapes
    x = torch.randn(1, 1, 16, 32, 32)
    measured.eval()
    package.eval()
    torch.testing.assert_close(measured(x), package(x))


def _record(variant, genotype, seed, dice, lesion=0.0, tp=1.0):
    job = start.Job(variant, genotype, seed, seed, 8)
    epochs = [{"loss": -0.2, "foreground_tp": tp, "dead_head_fraction": 0.01}] * 3
    return job.key, {"key": job.key, "job": job.__dict__, "scores": {
        "mean_fg_dice": dice, "class_dice": {"1": 2 * dice, "2": lesion}, "non_start": dice < start.NON_START_DICE,
        "epochs": epochs, "dead_head_init": 0.01, "dead_head_end": 0.02, "cpu_seconds": 30.0}}


def test_summary_counts_non_starts_and_pairs_by_genotype_and_seeds():
    records = dict([
        _record("today", "reference", 0, 0.50), _record("today", "reference", 1, 0.0, tp=0.0),
        _record("today", "searched", 0, 0.40),
        _record("fix", "reference", 0, 0.55), _record("fix", "reference", 1, 0.45, lesion=0.3),
        _record("fix", "searched", 0, 0.50), _record("fix", "searched", 9, 0.60),  # no partner: unpaired
    ])
    rows = {r["variant"]: r for r in summarise(records)["rows"]}
    assert rows["today"]["non_starts"] == 1 and rows["fix"]["non_starts"] == 0
    assert rows["today"]["monitor_agrees"] == 3 and rows["today"]["monitor_flagged"] == 1
    assert rows["fix"]["lesion_learned"] == 1
    pa, ps = rows["fix"]["paired_all"], rows["fix"]["paired_started"]
    assert pa["n"] == 3 and pa["mean"] == pytest.approx((0.05 + 0.45 + 0.10) / 3)
    assert ps["n"] == 2 and ps["mean"] == pytest.approx(0.075)
    assert rows["today"]["paired_all"]["mean"] == 0.0


def test_plan_runs_known_failures_first_and_extends_seed_major():
    from benchmarks.start_study import KNOWN_FAILURES, plan

    screen = plan("screen", ["today", "fix"], 8)
    assert [(j.genotype, j.init_seed) for j in screen[:2]] == [KNOWN_FAILURES[0]] * 2
    assert len(screen) == 2 * len(KNOWN_FAILURES)
    ext = plan("extend", ["today"], 8)
    assert len(ext) == 40 and [j.init_seed for j in ext[:4]] == [0] * 4
    data = plan("data", [], 8)
    assert all(j.variant == "today" for j in data) and any(j.init_seed != j.data_seed for j in data)
    with pytest.raises(ValueError):
        plan("nope", [], 8)


def test_unknown_variant_is_one_line(capsys):
    from benchmarks import start_study

    assert start_study.main(["--variants", "nope", "--out", "/nonexistent/x"]) == 2
    assert "unknown variant(s) nope" in capsys.readouterr().err
    assert start_study.main(["--shard", "2/2", "--out", "/nonexistent/x"]) == 2
    assert "--shard '2/2'" in capsys.readouterr().err
    assert start_study.main(["--profile", "huge", "--out", "/nonexistent/x"]) == 2
    assert "--profile 'huge'" in capsys.readouterr().err


def test_tiny_start_study_runs_and_resumes(tmp_path, monkeypatch):
    from benchmarks import start_study

    torch.set_num_threads(1)
    for var in ("C2FNAS_raw", "C2FNAS_preprocessed", "C2FNAS_results"):
        monkeypatch.setenv(var, str(tmp_path / "unused"))
    monkeypatch.setattr(start_study, "KNOWN_FAILURES", (("reference", 0),))
    args = ["--profile", "tiny", "--phase", "screen", "--variants", "today", "linear_classifier",
            "--out", str(tmp_path / "out"), "--workdir", str(tmp_path / "work"), "--no-progress"]
    assert start_study.main(args) == 0
    stored = json.loads((tmp_path / "out" / "results_screen_0of1.json").read_text())["records"]
    assert [r["key"] for r in stored] == ["today|reference|w8|i0|d0", "linear_classifier|reference|w8|i0|d0"]
    s = stored[0]["scores"]
    assert set(s["class_dice"]) == {"1", "2"} and len(s["epochs"]) == 1 and 0 <= s["dead_head_init"] <= 1
    assert stored[0]["scores"]["params"] + 3 == stored[1]["scores"]["params"]  # one bias per class
    assert (tmp_path / "out" / "start_study.png").stat().st_size > 0
    assert "| today | 8 | 1 |" in (tmp_path / "out" / "summary.md").read_text()

    monkeypatch.setattr("benchmarks.study.start.train_job", lambda *a, **k: pytest.fail("a stored job was redone"))
    assert start_study.main(args) == 0
