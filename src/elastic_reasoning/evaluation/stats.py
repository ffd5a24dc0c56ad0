"""Uncertainty for budget sweeps: bootstrap intervals over problems (and seeds), paired differences. numpy only.

The unit of evaluation is a **problem**: each problem's score is its Avg@k (the mean correctness of its k samples, the
paper's Avg@16 convention). With several seeds (independently trained models, or independent sampling seeds) a
problem has one Avg@k per seed. The point estimate is the mean over seeds and problems; the 95 % interval is a
percentile bootstrap that resamples problems with replacement (the benchmark is a sample of problems) and, where
there are several seeds, seeds with replacement too (a two-level bootstrap: seed-to-seed variation is part of what a
reader would see on a rerun). A paired difference between two models on the same problems resamples the problems
*jointly* (the same problems for both), which removes the between-problem variance that an unpaired comparison of
two intervals keeps; each model's seeds are resampled independently.

Bootstrap draws are seeded (``seed``), so a summary is the same bits every time it is computed from the same rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

LEVEL = 0.95
DRAWS = 2000


def score_matrix(per_seed: Sequence[Mapping[str, float]], problems: Sequence[str] | None = None) -> np.ndarray:
    """(seeds, problems) matrix of per-problem scores (Avg@k, 0..1), problems in a common order.

    Every seed must cover the same problems: a comparison over different problem sets is refused."""
    if not per_seed:
        raise ValueError("no seeds")
    ids = list(problems) if problems is not None else sorted(per_seed[0])
    for k, scores in enumerate(per_seed):
        if set(scores) != set(ids):
            missing = sorted(set(ids) - set(scores))[:3]
            extra = sorted(set(scores) - set(ids))[:3]
            raise ValueError(f"seed {k} covers other problems than the first (missing {missing}, extra {extra})")
    return np.array([[scores[p] for p in ids] for scores in per_seed], dtype=float)


def _draws(matrix: np.ndarray, rng: np.random.Generator, draws: int, problem_weights: np.ndarray | None = None):
    """Bootstrap means of a (seeds, problems) matrix: (draws,) array. Resampling as multinomial counts."""
    n_seeds, n_problems = matrix.shape
    if problem_weights is None:
        problem_weights = rng.multinomial(n_problems, np.full(n_problems, 1.0 / n_problems), size=draws)
    if n_seeds > 1:
        seed_weights = rng.multinomial(n_seeds, np.full(n_seeds, 1.0 / n_seeds), size=draws)
    else:
        seed_weights = np.ones((draws, 1))
    per_problem = seed_weights @ matrix  # (draws, problems): the resampled seeds' sum for each problem
    return (per_problem * problem_weights).sum(axis=1) / (n_seeds * n_problems)


def _interval(values: np.ndarray, level: float) -> tuple[float, float]:
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return float(low), float(high)


def mean_ci(matrix: np.ndarray, *, level: float = LEVEL, draws: int = DRAWS, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high) of a (seeds, problems) score matrix, as fractions. The interval always contains the mean."""
    matrix = np.atleast_2d(np.asarray(matrix, dtype=float))
    mean = float(matrix.mean())
    if matrix.size == 1:
        return mean, mean, mean
    low, high = _interval(_draws(matrix, np.random.default_rng(seed), draws), level)
    return mean, min(low, mean), max(high, mean)


def paired_difference_ci(a: np.ndarray, b: np.ndarray, *, level: float = LEVEL, draws: int = DRAWS,
                         seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high) of mean(a) - mean(b) for two (seeds, problems) matrices over the same problems (columns in
    the same order): problems resampled jointly, each side's seeds independently."""
    a = np.atleast_2d(np.asarray(a, dtype=float))
    b = np.atleast_2d(np.asarray(b, dtype=float))
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a paired difference needs the same problems: {a.shape[1]} against {b.shape[1]}")
    mean = float(a.mean() - b.mean())
    rng = np.random.default_rng(seed)
    n = a.shape[1]
    weights = rng.multinomial(n, np.full(n, 1.0 / n), size=draws)
    diffs = _draws(a, rng, draws, weights) - _draws(b, rng, draws, weights)
    low, high = _interval(diffs, level)
    return mean, min(low, mean), max(high, mean)
