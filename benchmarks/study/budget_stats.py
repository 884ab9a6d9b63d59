"""The statistics of the budget study (documentation/studies/search_budget_study.md), fixed
before it runs: D and its bootstrap, Holm's correction, the decision rule, the taus.

D = mean over search runs of (winner - median of the matched random genotypes), each arm's
score its mean Dice over seeds and held-out cases. The bootstrap resamples every source of
variation the claim is about: held-out cases, training seeds, random genotypes and search runs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

import numpy as np

MARGIN = 0.02  # the Dice gain that makes a search worth its cost
ALPHA = 0.05


def _d(winners: np.ndarray, randoms: np.ndarray, runs, seeds, cases, genos) -> float:
    w = np.nanmean(winners[np.ix_(runs, seeds, cases)], axis=(1, 2))
    r = np.nanmean(randoms[np.ix_(genos, seeds, cases)], axis=(1, 2))
    return float(np.mean(w) - np.median(r))


def d_statistic(winners: np.ndarray, randoms: np.ndarray, n_boot: int = 2000, seed: int = 0) -> dict[str, float | None]:
    """`winners` (runs, seeds, cases), `randoms` (genotypes, seeds, cases): D, its 90% bootstrap
    interval and the one-sided p of D <= 0 (1 + #{D* <= 0}) / (B + 1)."""
    winners, randoms = np.asarray(winners, dtype=float), np.asarray(randoms, dtype=float)
    if winners.ndim != 3 or randoms.ndim != 3 or not winners.size or not randoms.size \
            or winners.shape[1:] != randoms.shape[1:]:
        return {"d": None, "low": None, "high": None, "p": None}
    n_w, n_s, n_c = winners.shape
    n_g = randoms.shape[0]
    observed = _d(winners, randoms, np.arange(n_w), np.arange(n_s), np.arange(n_c), np.arange(n_g))
    rng = np.random.default_rng(seed)
    boots = np.array([_d(winners, randoms, rng.integers(n_w, size=n_w), rng.integers(n_s, size=n_s),
                         rng.integers(n_c, size=n_c), rng.integers(n_g, size=n_g)) for _ in range(n_boot)])
    boots = boots[np.isfinite(boots)]
    if not len(boots):
        return {"d": observed, "low": None, "high": None, "p": None}
    return {"d": observed, "low": float(np.quantile(boots, 0.05)), "high": float(np.quantile(boots, 0.95)),
            "p": (1 + int(np.sum(boots <= 0))) / (len(boots) + 1)}


def holm(pvalues: Mapping[str, float | None]) -> dict[str, float | None]:
    """Holm's step-down adjusted p-values (None stays None and does not count in the family)."""
    known = sorted(((p, k) for k, p in pvalues.items() if p is not None), key=lambda x: x[0])
    m = len(known)
    out: dict[str, float | None] = {k: None for k in pvalues}
    running = 0.0
    for i, (p, k) in enumerate(known):
        running = max(running, min(1.0, (m - i) * p))
        out[k] = running
    return out


def between_sd(scores: Sequence[float]) -> float | None:
    v = [s for s in scores if s is not None and np.isfinite(s)]
    return float(np.std(v, ddof=1)) if len(v) > 1 else None


def genotype_sd(matrices: np.ndarray) -> float | None:
    """The spread between genotypes once seed noise is taken out: sqrt(var of arm means -
    mean seed variance / seeds), from (genotypes, seeds, cases)."""
    m = np.asarray(matrices, dtype=float)
    if m.ndim != 3 or m.shape[0] < 2 or m.shape[1] < 2:
        return None
    per_seed = np.nanmean(m, axis=2)  # (genotypes, seeds)
    means = per_seed.mean(axis=1)
    seed_var = float(np.mean(np.var(per_seed, axis=1, ddof=1)))
    return float(np.sqrt(max(0.0, float(np.var(means, ddof=1)) - seed_var / m.shape[1])))


@dataclass
class Decision:
    verdict: str  # "worth it" | "not worth it" | "unreliable" | "undecided"
    reason: str
    d_low: float | None
    d_high: float | None
    winners_beat_reference: bool
    winner_sd: float | None
    genotype_sd: float | None

    def to_dict(self) -> dict:
        return asdict(self)


def decide(d: Mapping[str, float | None], reference_p_holm: float | None, winner_sd: float | None,
           genotype_sd_value: float | None, margin: float = MARGIN) -> Decision:
    """The rule: unreliable if the winners spread as much as genotypes do; worth it if the lower
    90% bound of D is above the margin and the winners beat the scaled reference (Holm p < ALPHA);
    not worth it if the upper bound is below the margin; undecided otherwise."""
    low, high = d.get("low"), d.get("high")
    beat = reference_p_holm is not None and reference_p_holm < ALPHA
    args = (low, high, beat, winner_sd, genotype_sd_value)
    if genotype_sd_value == 0.0:
        return Decision("unreliable", "random genotypes of this cost do not differ beyond seed noise: no "
                                      "topology to find at this budget", *args)
    if winner_sd is not None and genotype_sd_value is not None and winner_sd >= genotype_sd_value:
        return Decision("unreliable", f"the winners of the search runs spread (sd {winner_sd:.3f}) as much as "
                                      f"random genotypes do (sd {genotype_sd_value:.3f})", *args)
    if low is not None and low > margin and beat:
        return Decision("worth it", f"D's lower 90% bound {low:+.3f} > {margin:+.2f} and the winners beat the "
                                    "scaled reference", *args)
    if high is not None and high < margin:
        return Decision("not worth it", f"D's upper 90% bound {high:+.3f} < {margin:+.2f}", *args)
    return Decision("undecided", "D's interval straddles the margin, or the winners do not beat the scaled "
                                 "reference", *args)


def kendall_between(a: Mapping[str, float], b: Mapping[str, float]) -> dict[str, float | int | None]:
    """Kendall tau-b between two scorings of the same arms (e.g. two budgets, two seeds)."""
    from c2fnas_auto.search.kendall import kendall_tau_b

    keys = sorted(k for k in a if k in b and a[k] is not None and b[k] is not None)
    return {"n": len(keys), "tau": kendall_tau_b([a[k] for k in keys], [b[k] for k in keys])}
