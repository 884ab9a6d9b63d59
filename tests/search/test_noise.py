"""The noise statistics: reliability and expected tau from candidate and seed spreads."""

import math
import random

import pytest

from c2fnas_auto.search.noise import expected_tau, noise_check, pooled_seed_variance, spread_sample


def test_pure_signal_is_fully_reliable():
    first = {i: i / 10 for i in range(8)}
    check = noise_check("coarse", first, {0: [0.0], 3: [0.3], 7: [0.7]})
    assert check.seed_sd == 0 and check.reliability == 1.0 and check.within_noise is False
    assert check.expected_tau == pytest.approx(1.0) and "above its noise" in check.message()


def test_pure_noise_is_within_noise():
    rng = random.Random(0)
    first = {i: rng.gauss(0.7, 0.05) for i in range(30)}
    repeats = {i: [rng.gauss(0.7, 0.05) for _ in range(3)] for i in range(0, 30, 3)}
    check = noise_check("coarse", first, repeats)
    assert check.within_noise is True and check.reliability < 0.5
    assert "within its noise" in check.message()


def test_known_variances_are_recovered():
    """Genotype sd 0.04, seed sd 0.03: reliability 0.64, tau with the truth (2/pi) asin(0.8)."""
    rng = random.Random(1)
    true = [rng.gauss(0, 0.04) for _ in range(4000)]
    first = {i: t + rng.gauss(0, 0.03) for i, t in enumerate(true)}
    repeats = {i: [true[i] + rng.gauss(0, 0.03)] for i in range(2000)}
    check = noise_check("standalone", first, repeats)
    assert check.reliability == pytest.approx(0.64, abs=0.05)
    assert check.seed_sd == pytest.approx(0.03, rel=0.05)
    assert check.expected_tau == pytest.approx(2 / math.pi * math.asin(math.sqrt(check.reliability)))


def test_too_few_repeats_give_no_verdict():
    check = noise_check("coarse", {0: 0.1, 1: 0.2, 2: 0.3}, {0: [0.15]})
    assert check.within_noise is None and check.reliability is None and "not measured" in check.message()
    assert noise_check("coarse", {0: 0.5}, {}).score_sd is None


def test_identical_scores_rank_nothing():
    check = noise_check("coarse", {i: 0.5 for i in range(4)}, {0: [0.5], 1: [0.5]})
    assert check.reliability == 0.0 and check.within_noise is True


def test_pooled_seed_variance_ignores_unknown_candidates():
    var, n = pooled_seed_variance({"a": 1.0, "b": 2.0}, {"a": [3.0], "zz": [5.0], "b": []})
    assert n == 1 and var == pytest.approx(2.0)


def test_expected_tau_limits():
    assert expected_tau(0.0) == 0.0 and expected_tau(1.0) == pytest.approx(1.0)
    assert expected_tau(0.5) == pytest.approx(1 / 3)


def test_spread_sample():
    assert spread_sample(list(range(10)), 3) == [0, 4, 9]
    assert spread_sample([1, 2], 5) == [1, 2] and spread_sample([1, 2], 1) == [1] and spread_sample([], 2) == []
