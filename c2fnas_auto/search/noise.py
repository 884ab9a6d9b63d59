"""Whether a stage's ranking is above its own noise.

A candidate's score is its genotype's worth plus training noise (initial weights, sampled
patches). The search re-trains a few candidates with a second seed: the spread between
the seeds of one candidate estimates the noise variance, the spread between candidates
(one seed each) the sum of both. Their difference is the variance that belongs to the
genotypes, and

    reliability = var_genotype / (var_genotype + var_seed)

is the share of a single score's variance that ranks genotypes. Under a normal model the
expected Kendall tau follows from it: with the genotypes' true order,
(2/pi) asin(sqrt(reliability)); between two seeds of the same candidates,
(2/pi) asin(reliability), the ceiling any cheaper proxy can reach.

The verdict is one-sided: a stage's ranking is "above its noise" only when the data show the
genotype variance exceeds the seed variance (reliability > 0.5, where a single score says more
about the genotype than about its seed) at the 5% level: (score variance / seed variance) / 2
against the F distribution of the two variances' degrees of freedom. Otherwise it is "within its
noise" -- with few repeats that includes rankings that may be good but are not shown to be.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

WITHIN_NOISE_RELIABILITY = 0.5
ABOVE_NOISE_P = 0.05
MIN_REPEATED = 2  # candidates with a second seed needed before any verdict


@dataclass
class NoiseCheck:
    """One stage's signal against its noise; None where too few scores say anything."""

    stage: str
    candidates: int  # scored at the first seed
    repeated: int  # of those, scored with more seeds
    score_sd: float | None  # between candidates, one seed each
    seed_sd: float | None  # pooled between seeds of one candidate
    genotype_sd: float | None  # sqrt(max(0, score var - seed var))
    reliability: float | None
    expected_tau: float | None  # single-seed ranking vs the genotypes' true order
    expected_tau_between_seeds: float | None  # two single-seed rankings of the same candidates
    p_above_noise: float | None  # one-sided p of "reliability <= 0.5"
    within_noise: bool | None

    def to_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}

    def message(self) -> str:
        """One plain line for the CLI and the report."""
        if self.within_noise is None:
            return (f"{self.stage}: noise not measured ({self.repeated} candidate(s) re-trained with a second seed, "
                    f"{MIN_REPEATED} needed)")
        head = (f"{self.stage}: candidates spread sd {self.score_sd:.4f}, seed-to-seed sd {self.seed_sd:.4f} "
                f"over {self.repeated} re-trained, reliability {self.reliability:.2f} (p {self.p_above_noise:.2f}), "
                f"expected tau {self.expected_tau:.2f}")
        if not self.within_noise:
            return head + ": the ranking is above its noise"
        if self.reliability is not None and self.reliability < WITHIN_NOISE_RELIABILITY:
            return head + ": the ranking is within its noise (a score says more about the seed than the genotype)"
        return head + ": the ranking is within its noise (not shown above it; more repeats would tell)"


def _var(values: Sequence[float]) -> float | None:
    if len(values) < 2:
        return None
    m = sum(values) / len(values)
    return sum((v - m) ** 2 for v in values) / (len(values) - 1)


def pooled_seed_variance(first: Mapping[Any, float],
                         repeats: Mapping[Any, Sequence[float]]) -> tuple[float | None, int]:
    """Within-candidate variance pooled over the candidates that have more than one seed."""
    ss, dof, n = 0.0, 0, 0
    for key, more in repeats.items():
        if key not in first or not more:
            continue
        values = [first[key], *more]
        ss += _var(values) * (len(values) - 1)  # type: ignore[operator]
        dof += len(values) - 1
        n += 1
    return (ss / dof if dof else None), n


def expected_tau(correlation: float) -> float:
    """Kendall's tau of two jointly normal variables with this correlation (Greiner's relation)."""
    return 2.0 / math.pi * math.asin(max(-1.0, min(1.0, correlation)))


def noise_check(stage: str, first: Mapping[Any, float], repeats: Mapping[Any, Sequence[float]]) -> NoiseCheck:
    """`first`: each candidate's score at the search seed; `repeats`: more seeds of some of them."""
    total = _var(list(first.values()))
    seed_var, repeated = pooled_seed_variance(first, repeats)
    if total is None or seed_var is None or repeated < MIN_REPEATED:
        return NoiseCheck(stage, len(first), repeated, None if total is None else math.sqrt(total),
                          None if seed_var is None else math.sqrt(seed_var), None, None, None, None, None, None)
    genotype_var = max(0.0, total - seed_var)
    if genotype_var + seed_var == 0.0:  # every score identical: nothing ranks anything
        reliability = 0.0
    else:
        reliability = genotype_var / (genotype_var + seed_var)
    p = p_above_noise(total, len(first) - 1, seed_var, seed_dof(first, repeats))
    return NoiseCheck(stage, len(first), repeated, math.sqrt(total), math.sqrt(seed_var), math.sqrt(genotype_var),
                      reliability, expected_tau(math.sqrt(reliability)), expected_tau(reliability), p,
                      p >= ABOVE_NOISE_P)


def seed_dof(first: Mapping[Any, float], repeats: Mapping[Any, Sequence[float]]) -> int:
    return sum(len(more) for key, more in repeats.items() if key in first)


def p_above_noise(total_var: float, total_dof: int, seed_var: float, dof: int) -> float:
    """One-sided p of "genotype variance <= seed variance": at that boundary the score variance
    is twice the seed variance, and (total / seed) / 2 follows F(total_dof, dof)."""
    if seed_var == 0.0:
        return 0.0 if total_var > 0.0 else 1.0
    # start-up: scipy.stats costs about 1 s and c2fnas_search --help imports this module
    from scipy.stats import f

    return float(f.sf(total_var / seed_var / 2.0, total_dof, dof))


def spread_sample(ranked: Sequence, n: int) -> list:
    """n items spread evenly over a ranking (best and worst included): the candidates to re-train."""
    if n <= 0 or not ranked:
        return []
    if n >= len(ranked):
        return list(ranked)
    if n == 1:
        return [ranked[0]]
    return [ranked[round(i * (len(ranked) - 1) / (n - 1))] for i in range(n)]
