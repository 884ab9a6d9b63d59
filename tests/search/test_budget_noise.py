"""The search under a cost budget and its noise check, driven through SearchHooks with fakes:
the cost model's real prices decide what may be trained; pure-noise and pure-signal evaluators
decide whether a stage's ranking is within its noise."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import pytest

from c2fnas_auto.errors import C2FNASError
from c2fnas_auto.nas.budget import Pricing
from c2fnas_auto.nas.config import NetworkConfig
from c2fnas_auto.search.core import search_core
from c2fnas_auto.search.run import SearchRun
from c2fnas_auto.search.jobs import WorkerOptions
from c2fnas_auto.search.report import within_noise_warnings
from c2fnas_auto.search.runner import Proposal
from c2fnas_auto.search.settings import SearchHooks, SearchSettings

from .fakes import ops_score, topology_score

SMALL = dict(coarse_candidates=12, min_epochs=1, eta=3, rungs=2, clusters=4, population=4, fine_epochs=1,
             generations=2, iters_per_epoch=2, seed=5, tournament=2, standalone_sample=5, noise_repeats=6,
             standalone_repeats=4)
FAST = WorkerOptions(stale_seconds=0.5, poll_seconds=0.02)
PRICING = Pricing(NetworkConfig(1, 2, stem_channels=8, level_channels=(16, 32, 64, 128)), (16, 32, 32))


def _uniform(*key) -> float:
    return int(hashlib.sha1(repr(key).encode()).hexdigest()[:8], 16) / 2 ** 32 - 0.5


@dataclass
class Fake:
    """noise: scores independent of the genotype (a function of the seed only);
    signal: scores a function of the genotype, the same for every seed."""

    kind: str
    pricing: Pricing | None = None
    calls: list = field(default_factory=list)
    widths: list = field(default_factory=list)

    def _score(self, p: Proposal, true: float) -> float:
        seed = 0 if p.seed is None else p.seed
        return 0.7 + 0.1 * _uniform(seed, p.key(), p.epochs) if self.kind == "noise" else true

    def coarse(self, p: Proposal) -> dict:
        self.calls.append(("coarse", p))
        return {"score": self._score(p, topology_score(p.levels))}

    def standalone(self, p: Proposal) -> dict:
        self.calls.append(("standalone", p))
        return {"score": self._score(p, ops_score(p.ops))}

    def fine_evaluator(self, supernet):
        def evaluate(p: Proposal) -> dict:
            self.calls.append(("fine", p))
            return {"score": ops_score(p.ops)}
        return evaluate

    def hooks(self) -> SearchHooks:
        return SearchHooks(coarse_evaluate=self.coarse, train_supernet=lambda levels: ({"levels": levels}, {}),
                           fine_evaluator=self.fine_evaluator, standalone_evaluate=self.standalone,
                           pricing=self.pricing, use_width=self.widths.append)


def _run(tmp_path, fake, **kw):
    return search_core(tmp_path / "search", "Task097_Fake", SearchSettings(**{**SMALL, **kw}), fake.hooks(),
                       run=SearchRun(progress=False, lines=False, workers=FAST))


def _stage(state, name):
    return next(s for s in state.noise["stages"] if s["stage"] == name)


def test_pure_noise_is_flagged_within_its_noise(tmp_path):
    fake = Fake("noise")
    state = _run(tmp_path, fake)
    repeats = [p for stage, p in fake.calls if p.seed is not None]
    assert len(state.coarse_repeat) == 6 and len(state.standalone_repeat) == 4 and len(repeats) == 10
    assert {p.seed for p in repeats} == {SMALL["seed"] + 1}
    coarse = _stage(state, "coarse rung 0")
    assert coarse["within_noise"] is True and coarse["repeated"] == 6
    assert _stage(state, "fine (stand-alone)")["within_noise"] is True
    report = json.loads((tmp_path / "search" / "report.json").read_text())
    warnings = within_noise_warnings(report)
    assert len(warnings) == 2 and all("within its noise" in w for w in warnings)
    assert report["counts"]["coarse_repeats_trained"] == 6 and report["compute_seconds"]["repeats"] >= 0


def test_pure_signal_is_not_flagged(tmp_path):
    state = _run(tmp_path, Fake("signal"))
    for name in ("coarse rung 0", "fine (stand-alone)"):
        s = _stage(state, name)
        assert s["within_noise"] is False and s["reliability"] == 1.0 and s["seed_sd"] == 0.0
    report = json.loads((tmp_path / "search" / "report.json").read_text())
    assert within_noise_warnings(report) == []


def test_noise_check_off(tmp_path):
    fake = Fake("noise")
    state = _run(tmp_path, fake, noise_repeats=0, standalone_repeats=0)
    assert all(p.seed is None for _, p in fake.calls)
    assert all(s["within_noise"] is None for s in state.noise["stages"])


def _limit():
    from c2fnas_auto.nas.topology import enumerate_topologies

    prices = sorted(PRICING.cost(t, ["3d"] * 12).params for t in enumerate_topologies()[::40])
    return prices[len(prices) // 2]


def test_a_budget_keeps_both_stages_inside_it(tmp_path):
    limit = _limit()
    fake = Fake("signal", PRICING)
    state = _run(tmp_path, fake, max_params=limit, budget_band=0.3)
    assert state.budget["max_params"] == limit and state.budget["band"] == 0.3
    stages = {stage for stage, _ in fake.calls}
    assert stages == {"coarse", "fine", "standalone"}
    for stage, p in fake.calls:
        params = PRICING.cost(p.levels, p.ops).params
        assert 0.7 * limit <= params <= limit, f"{stage} trained {params} parameters outside the budget"
    assert state.winner["params"] is None or state.winner["params"] <= limit
    skipped = [r for r in state.fine if r.status == "skipped"]
    assert all("outside the budget" in r.reason for r in skipped)
    report = json.loads((tmp_path / "search" / "report.json").read_text())
    assert report["budget"]["max_params"] == limit


def test_equal_cost_compares_candidates_at_the_budget(tmp_path):
    limit = _limit()
    fake = Fake("signal", PRICING)
    state = _run(tmp_path, fake, max_params=limit, budget_band=0.1, equal_cost=True)
    coarse = [p for stage, p in fake.calls if stage == "coarse"]
    assert coarse and all(p.width_multiplier is not None for p in coarse)
    for p in coarse:
        assert 0.9 * limit <= PRICING.cost(p.levels, p.ops, p.width_multiplier).params <= limit
    m = state.winner["width_multiplier"]
    assert m is not None and fake.widths == [m], "the supernet is told the coarse winner's widths"
    for stage, p in fake.calls:
        if stage != "coarse":
            width = p.width_multiplier if p.width_multiplier is not None else m
            assert PRICING.cost(p.levels, p.ops, width).params <= limit
    assert all(p.width_multiplier == m for stage, p in fake.calls if stage == "standalone")


def test_budget_errors(tmp_path):
    with pytest.raises(C2FNASError, match="cost model"):
        _run(tmp_path, Fake("signal"), max_params=1000)
    with pytest.raises(C2FNASError, match="no topology"):
        _run(tmp_path / "b", Fake("signal", PRICING), max_params=1000)
    with pytest.raises(C2FNASError, match="need a budget"):
        SearchSettings(equal_cost=True).validate()
    with pytest.raises(C2FNASError, match="drop --max-params"):
        SearchSettings(budget="reference", max_params=5).validate()
    with pytest.raises(C2FNASError, match="--budget 'x'"):
        SearchSettings(budget="x").validate()
    with pytest.raises(C2FNASError, match="--noise-repeats -1"):
        SearchSettings(noise_repeats=-1).validate()
    with pytest.raises(C2FNASError, match="read from the plans"):
        _run(tmp_path / "c", Fake("signal", PRICING), budget="reference")
