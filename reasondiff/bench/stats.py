"""Error bars and paired comparisons of the sweep (pure functions over 0/1 correctness).

- Per (model, task, limit): the Wilson score interval of the accuracy (scipy's binomtest). It
  keeps its coverage at the small n people run on one GPU or a CPU, and near 0% and 100%, where
  the normal interval does not.
- Per (model, task): percentile bootstrap intervals, over questions, of Table 1's performance (the
  best accuracy over the limits) and scaling (the least-squares slope of accuracy against the
  limit), and of s1's Scaling (the mean slope over pairs of runs, against the compute they spent). A resample redraws questions, never single (question, limit) cells, because the limits
  of one question share one generation. The seed is fixed (bench.seed).
- Tuned vs base on the same questions: McNemar's exact test at each model's best limit (a
  two-sided binomial test on the questions exactly one of them gets right), and the bootstrap
  interval of the difference of slopes, with both models resampled on the same question draws.

The best limit is chosen on the same questions it is then tested on, so the performance numbers
lean optimistic for both models alike. This is the paper's definition of performance, and it is
kept here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np


def wilson_interval(correct: int, n: int, confidence_level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion, in percent; (nan, nan) for n = 0."""
    if n <= 0:
        return math.nan, math.nan
    from scipy.stats import binomtest

    ci = binomtest(int(correct), int(n)).proportion_ci(confidence_level=confidence_level, method="wilson")
    return 100.0 * float(ci.low), 100.0 * float(ci.high)


def scaling_slopes(token_limits: Sequence[float], accuracy_pct: np.ndarray) -> np.ndarray:
    """Least-squares slope of accuracy (%) against the limit along the last axis (% per token)."""
    x = np.asarray(token_limits, dtype=float)
    if x.size < 2 or np.ptp(x) == 0:
        return np.full(accuracy_pct.shape[:-1], np.nan)
    dx = x - x.mean()
    y = np.asarray(accuracy_pct, dtype=float)
    return ((y - y.mean(axis=-1, keepdims=True)) * dx).sum(axis=-1) / (dx ** 2).sum()


def s1_scaling_slopes(compute_tokens: np.ndarray, accuracy_pct: np.ndarray) -> np.ndarray:
    """s1's "Scaling" (Muennighoff et al. 2025, Sec. 3.2, eq. 2) along the last axis: the mean over
    all pairs of runs a < b of (f(b) − f(a)) / (b − a), where a is the test-time compute a run
    spent (thinking tokens per question, on average) and f its accuracy (%): % per token.

    Runs that spent the same compute are one point of s1's set 𝒜 (with greedy decoding they are
    the same generations, so the same accuracy; their mean is taken). With fewer than two distinct
    amounts of compute there is no pair: NaN."""
    x = np.asarray(compute_tokens, dtype=float)
    y = np.asarray(accuracy_pct, dtype=float)
    x, y = np.broadcast_arrays(x, y)
    flat_x, flat_y = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
    out = np.full(flat_x.shape[0], np.nan)
    for i, (xs, ys) in enumerate(zip(flat_x, flat_y, strict=True)):
        points, inverse = np.unique(xs, return_inverse=True)
        if points.size < 2:
            continue
        values = np.bincount(inverse, weights=ys) / np.bincount(inverse)
        upper = np.triu_indices(points.size, k=1)
        dx = points[None, :] - points[:, None]
        dy = values[None, :] - values[:, None]
        out[i] = float((dy[upper] / dx[upper]).mean())
    return out.reshape(x.shape[:-1])


def _bootstrap(statistic: Callable[[np.ndarray], np.ndarray], n: int, *, resamples: int, seed: int,
               confidence_level: float) -> tuple[float, float]:
    """Percentile interval of statistic(question indices) over resampled question sets (scipy)."""
    if n < 2:
        return math.nan, math.nan
    from scipy.stats import bootstrap

    def on_indices(idx: np.ndarray, axis: int = -1) -> np.ndarray:
        return statistic(np.asarray(idx, dtype=int))

    result = bootstrap((np.arange(n),), on_indices, vectorized=True, n_resamples=resamples,
                       confidence_level=confidence_level, method="percentile", rng=np.random.default_rng(seed))
    low, high = result.confidence_interval
    return float(low), float(high)


def performance_and_scaling_intervals(correct: np.ndarray, token_limits: Sequence[int], *, resamples: int, seed: int,
                                      confidence_level: float = 0.95) -> dict[str, float]:
    """Bootstrap intervals of performance (max over limits of accuracy %) and scaling slope.

    `correct`: [questions, limits] of 0/1, limits in `token_limits` order."""
    correct = np.asarray(correct, dtype=float)
    n = correct.shape[0]

    def accuracies(idx: np.ndarray) -> np.ndarray:  # idx [..., n] -> [..., limits]
        return 100.0 * correct[idx].mean(axis=-2)

    perf = _bootstrap(lambda idx: accuracies(idx).max(axis=-1), n, resamples=resamples, seed=seed,
                      confidence_level=confidence_level)
    if len(token_limits) < 2:
        slope = (math.nan, math.nan)
    else:
        slope = _bootstrap(lambda idx: scaling_slopes(token_limits, accuracies(idx)), n, resamples=resamples,
                           seed=seed, confidence_level=confidence_level)
    return {"performance_low": perf[0], "performance_high": perf[1], "scaling_low": slope[0], "scaling_high": slope[1]}


def s1_scaling_interval(correct: np.ndarray, compute_tokens: np.ndarray, *, resamples: int, seed: int,
                        confidence_level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of s1's Scaling over questions: a resample redraws whole
    questions and recomputes both each run's accuracy and the compute it spent. `correct`,
    `compute_tokens`: [questions, limits]."""
    correct = np.asarray(correct, dtype=float)
    compute_tokens = np.asarray(compute_tokens, dtype=float)

    def statistic(idx: np.ndarray) -> np.ndarray:
        return s1_scaling_slopes(compute_tokens[idx].mean(axis=-2), 100.0 * correct[idx].mean(axis=-2))

    n = correct.shape[0]
    if correct.shape[-1] < 2 or n < 2:
        return math.nan, math.nan
    # by hand rather than scipy's bootstrap: a resample whose questions all ended before the smallest
    # limit spent the same compute at every limit and has no slope (NaN); it is left out
    draws = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    values = statistic(draws)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return math.nan, math.nan
    tail = 100.0 * (1.0 - confidence_level) / 2.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return float(low), float(high)


def mcnemar_exact(this_correct: Sequence[bool], other_correct: Sequence[bool]) -> dict[str, float]:
    """McNemar's exact test on paired verdicts: b = only this model right, c = only the other;
    two-sided binomial p of b among b + c at 1/2 (1.0 when they never disagree)."""
    this, other = np.asarray(this_correct, dtype=bool), np.asarray(other_correct, dtype=bool)
    b, c = int((this & ~other).sum()), int((~this & other).sum())
    if b + c == 0:
        return {"only_this": b, "only_other": c, "p_value": 1.0}
    from scipy.stats import binomtest

    return {"only_this": b, "only_other": c, "p_value": float(binomtest(b, b + c, 0.5).pvalue)}


def slope_difference_interval(this_correct: np.ndarray, other_correct: np.ndarray, token_limits: Sequence[int], *,
                              resamples: int, seed: int, confidence_level: float = 0.95) -> tuple[float, float, float]:
    """(difference of scaling slopes this − other, interval low, high): both models resampled on
    the same question draws (the questions are paired)."""
    this_correct = np.asarray(this_correct, dtype=float)
    other_correct = np.asarray(other_correct, dtype=float)
    point = float(scaling_slopes(token_limits, 100.0 * this_correct.mean(axis=0))
                  - scaling_slopes(token_limits, 100.0 * other_correct.mean(axis=0)))
    if len(token_limits) < 2:
        return point, math.nan, math.nan

    def diff(idx: np.ndarray) -> np.ndarray:
        return (scaling_slopes(token_limits, 100.0 * this_correct[idx].mean(axis=-2))
                - scaling_slopes(token_limits, 100.0 * other_correct[idx].mean(axis=-2)))

    low, high = _bootstrap(diff, this_correct.shape[0], resamples=resamples, seed=seed,
                           confidence_level=confidence_level)
    return point, low, high
