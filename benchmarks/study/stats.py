"""Statistics of the study, our own code (numpy only), all seeded.

Scores come as `dice[arm] -> array (seeds, cases)` of per-case mean foreground Dice on
held-out cases; every arm of a task was trained with the same seeds and scored on the
same cases, so arms are paired by seed and by case.

"Searched beats the random median" is tested two ways:
- `rank_p_value`: exact, under the null that the searched genotype is one more draw from
  the random population: p = (1 + #random genotypes scoring >= searched) / (N + 1).
- `bootstrap_p_value`: paired hierarchical bootstrap of T = searched - median over random
  genotypes (each genotype's score = mean over seeds and cases), resampling cases, seeds
  and random genotypes together; p = (1 + #{T* <= 0}) / (B + 1) (one-sided).

`size_adjusted` asks whether it beats random genotypes *of its size*: a bigger network may
simply learn more in a short training, and the search may find size rather than shape.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def arm_score(matrix: np.ndarray) -> float:
    """Mean over seeds and cases (NaN cases, with no foreground in truth nor prediction, skipped)."""
    return float(np.nanmean(matrix))


def seed_scores(matrix: np.ndarray) -> np.ndarray:
    """One score per seed: mean over that seed's cases."""
    return np.nanmean(matrix, axis=1)


def ranks(scores: dict[str, float]) -> dict[str, int]:
    """Rank 1 = best; ties share the better rank."""
    return {k: 1 + sum(v2 > v for v2 in scores.values()) for k, v in scores.items()}


def rank_p_value(searched: float, randoms: Sequence[float]) -> float | None:
    if not len(randoms):
        return None
    return (1 + sum(r >= searched for r in randoms)) / (len(randoms) + 1)


def _stat(searched: np.ndarray, randoms: np.ndarray, seeds: np.ndarray, cases: np.ndarray,
          genos: np.ndarray) -> float:
    s = np.nanmean(searched[np.ix_(seeds, cases)])
    r = np.nanmean(randoms[np.ix_(genos, seeds, cases)], axis=(1, 2))
    return float(s - np.median(r))


def bootstrap_p_value(searched: np.ndarray, randoms: np.ndarray, n_boot: int = 2000,
                      seed: int = 0) -> dict[str, float | None]:
    """`searched` (seeds, cases); `randoms` (genotypes, seeds, cases). Returns the observed
    difference to the random median, a 90% bootstrap interval and the one-sided p."""
    searched = np.asarray(searched, dtype=float)
    randoms = np.asarray(randoms, dtype=float)
    if randoms.ndim != 3 or randoms.shape[0] == 0 or searched.shape != randoms.shape[1:]:
        return {"diff": None, "low": None, "high": None, "p": None}
    n_g, n_s, n_c = randoms.shape
    every = (np.arange(n_s), np.arange(n_c), np.arange(n_g))
    observed = _stat(searched, randoms, *every)
    rng = np.random.default_rng(seed)
    boots = np.empty(n_boot)
    for b in range(n_boot):
        boots[b] = _stat(searched, randoms, rng.integers(n_s, size=n_s), rng.integers(n_c, size=n_c),
                         rng.integers(n_g, size=n_g))
    boots = boots[np.isfinite(boots)]
    if not len(boots):
        return {"diff": observed, "low": None, "high": None, "p": None}
    p = (1 + int(np.sum(boots <= 0))) / (len(boots) + 1)
    return {"diff": observed, "low": float(np.quantile(boots, 0.05)), "high": float(np.quantile(boots, 0.95)),
            "p": float(p)}


def seed_spread(matrix: np.ndarray) -> dict[str, float]:
    """Mean, standard deviation (ddof 1 when there are 2+ seeds), min and max of the per-seed scores."""
    s = seed_scores(matrix)
    s = s[np.isfinite(s)]
    if not len(s):
        return {"mean": float("nan"), "std": float("nan"), "min": float("nan"), "max": float("nan"), "n": 0,
                "zero_seeds": 0}
    return {"mean": float(s.mean()), "std": float(s.std(ddof=1)) if len(s) > 1 else 0.0,
            "min": float(s.min()), "max": float(s.max()), "n": int(len(s)),
            # trainings that learned nothing at all (Dice 0 on every held-out case): at short
            # budgets these decide a mean over few seeds, so the table counts them
            "zero_seeds": int(np.sum(s == 0.0))}


def pooled_bootstrap_p_value(pairs: list[tuple[np.ndarray, np.ndarray]], n_boot: int = 2000,
                             seed: int = 0) -> dict[str, float | None]:
    """Mean over tasks of T (as in `bootstrap_p_value`), one (searched, randoms) pair per task;
    the random genotypes are the same on every task, so one genotype resample is shared by
    all tasks, while cases and seeds are resampled within each task."""
    pairs = [(np.asarray(s, dtype=float), np.asarray(r, dtype=float)) for s, r in pairs]
    pairs = [(s, r) for s, r in pairs if r.ndim == 3 and r.shape[0] and s.shape == r.shape[1:]]
    if not pairs or len({r.shape[0] for _, r in pairs}) != 1:
        return {"diff": None, "low": None, "high": None, "p": None, "tasks": len(pairs)}
    n_g = pairs[0][1].shape[0]
    observed = float(np.mean([_stat(s, r, np.arange(r.shape[1]), np.arange(r.shape[2]), np.arange(n_g))
                              for s, r in pairs]))
    rng = np.random.default_rng(seed)
    boots = np.empty(n_boot)
    for b in range(n_boot):
        genos = rng.integers(n_g, size=n_g)
        boots[b] = np.mean([_stat(s, r, rng.integers(r.shape[1], size=r.shape[1]),
                                  rng.integers(r.shape[2], size=r.shape[2]), genos) for s, r in pairs])
    boots = boots[np.isfinite(boots)]
    p = (1 + int(np.sum(boots <= 0))) / (len(boots) + 1) if len(boots) else None
    return {"diff": observed, "low": float(np.quantile(boots, 0.05)) if len(boots) else None,
            "high": float(np.quantile(boots, 0.95)) if len(boots) else None, "p": p, "tasks": len(pairs)}


def paired_bootstrap(a: np.ndarray, b: np.ndarray, n_boot: int = 2000, seed: int = 0) -> dict[str, float | None]:
    """Arm A vs arm B, both (seeds, cases), paired by seed and case: the observed difference of
    means, a 90% bootstrap interval (seeds and cases resampled together) and the one-sided p
    of "A is not better" (1 + #{T* <= 0}) / (B + 1)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.size == 0:
        return {"diff": None, "low": None, "high": None, "p": None}
    n_s, n_c = a.shape
    d = a - b

    def stat(seeds: np.ndarray, cases: np.ndarray) -> float:
        sub = d[np.ix_(seeds, cases)]
        return float(np.nanmean(sub)) if np.isfinite(sub).any() else float("nan")

    observed = stat(np.arange(n_s), np.arange(n_c))
    rng = np.random.default_rng(seed)
    boots = np.array([stat(rng.integers(n_s, size=n_s), rng.integers(n_c, size=n_c)) for _ in range(n_boot)])
    boots = boots[np.isfinite(boots)]
    if not len(boots):
        return {"diff": observed, "low": None, "high": None, "p": None}
    return {"diff": observed, "low": float(np.quantile(boots, 0.05)), "high": float(np.quantile(boots, 0.95)),
            "p": (1 + int(np.sum(boots <= 0))) / (len(boots) + 1)}


def _avg_ranks(v: np.ndarray) -> np.ndarray:
    order = np.argsort(v, kind="stable")
    r = np.empty(len(v))
    r[order] = np.arange(len(v), dtype=float)
    for value in np.unique(v):  # ties share their mean rank
        tied = v == value
        r[tied] = r[tied].mean()
    return r


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3:
        return None
    rx, ry = _avg_ranks(x), _avg_ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def size_adjusted(params: dict[str, float], scores: dict[str, float], random_names: Sequence[str],
                  compared: Sequence[str]) -> dict[str, object]:
    """Score against log10(parameter count) among the random genotypes: Spearman rho, the
    line's slope (Dice per tenfold parameters) and intercept, and for each compared arm its residual
    (score minus the line's value at its size) with its rank and exact rank p among the
    random genotypes' residuals. Each random genotype's residual is taken from the line
    fitted without it (leave-one-out), so it is out of sample, as the compared arms' are."""
    names = [a for a in random_names if params.get(a) and a in scores and np.isfinite(scores[a])]
    out: dict[str, object] = {"num_random": len(names), "spearman_rho": None, "slope_per_decade": None,
                              "intercept": None}
    if len(names) < 4:
        return out
    x = np.log10([float(params[a]) for a in names])
    y = np.array([scores[a] for a in names])
    out["spearman_rho"] = spearman(x, y)
    slope, intercept = np.polyfit(x, y, 1)
    out["slope_per_decade"], out["intercept"] = float(slope), float(intercept)
    loo = []
    for i in range(len(names)):
        keep = np.arange(len(names)) != i
        b, a = np.polyfit(x[keep], y[keep], 1)
        loo.append(float(y[i] - (a + b * x[i])))
    for name in compared:
        if params.get(name) and name in scores and np.isfinite(scores[name]):
            res = float(scores[name] - (intercept + slope * np.log10(float(params[name]))))
            out[name] = {"params": float(params[name]), "residual": res,
                         "rank_among_random": 1 + sum(r > res for r in loo), "rank_p": rank_p_value(res, loo)}
    return out
