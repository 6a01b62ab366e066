"""Error bars and paired tests: Wilson and McNemar against hand-computed values, the bootstrap
against its own definition (seeded, over questions, paired), and the tables and sentences built
from them."""

from __future__ import annotations

import math

import numpy as np
import pytest

from reasondiff.bench import stats
from reasondiff.bench.tables import comparison_sentences, results_table, summary_markdown, summary_table

Z95 = 1.959963984540054


def _wilson_by_hand(k, n, z=Z95):
    p = k / n
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return 100 * (center - half), 100 * (center + half)


@pytest.mark.parametrize("k, n", [(1, 30), (0, 10), (10, 10), (17, 40), (250, 500)])
def test_wilson_interval_matches_the_formula(k, n):
    low, high = stats.wilson_interval(k, n)
    assert (low, high) == pytest.approx(_wilson_by_hand(k, n), abs=1e-9)
    assert 0 <= low <= 100 * k / n <= high <= 100
    assert all(math.isnan(v) for v in stats.wilson_interval(0, 0))


def test_mcnemar_exact_by_hand():
    # b = 5, c = 0: two-sided binomial p = 2 * 0.5**5
    this = [True] * 5 + [True, False] * 3
    other = [False] * 5 + [True, False] * 3
    result = stats.mcnemar_exact(this, other)
    assert (result["only_this"], result["only_other"]) == (5, 0)
    assert result["p_value"] == pytest.approx(0.0625)
    # b = 6, c = 1: 2 * (C(7,0) + C(7,1)) / 2**7
    result = stats.mcnemar_exact([True] * 6 + [False], [False] * 6 + [True])
    assert result["p_value"] == pytest.approx(2 * 8 / 128)
    assert stats.mcnemar_exact([True, False], [True, False])["p_value"] == 1.0  # never disagree


def test_scaling_slopes_vectorised_equals_least_squares():
    limits = [100, 200, 300]
    assert float(stats.scaling_slopes(limits, np.array([10.0, 20.0, 40.0]))) == pytest.approx(0.15)
    batch = np.array([[10.0, 20.0, 40.0], [30.0, 30.0, 30.0]])
    assert stats.scaling_slopes(limits, batch) == pytest.approx([0.15, 0.0])
    assert np.isnan(stats.scaling_slopes([256], np.array([40.0])))


def _improving(n=60, seed=0):
    """Questions × limits [64, 128, 256, 512]: accuracy rising with the limit."""
    rng = np.random.default_rng(seed)
    return (rng.random((n, 4)) < np.array([0.1, 0.3, 0.5, 0.7])).astype(float)


def test_bootstrap_is_seeded_over_questions_and_covers_the_estimate():
    correct = _improving()
    limits = [64, 128, 256, 512]
    a = stats.performance_and_scaling_intervals(correct, limits, resamples=500, seed=3)
    b = stats.performance_and_scaling_intervals(correct, limits, resamples=500, seed=3)
    c = stats.performance_and_scaling_intervals(correct, limits, resamples=500, seed=4)
    assert a == b and a != c
    accuracy = 100 * correct.mean(axis=0)
    assert a["performance_low"] <= accuracy.max() <= a["performance_high"]
    slope = float(stats.scaling_slopes(limits, accuracy))
    assert 0 < a["scaling_low"] <= slope <= a["scaling_high"]
    # constant answers: nothing to resample into, the interval collapses on the value
    flat = stats.performance_and_scaling_intervals(np.ones((20, 4)), limits, resamples=200, seed=0)
    assert flat["performance_low"] == flat["performance_high"] == 100.0
    assert flat["scaling_low"] == pytest.approx(0) and flat["scaling_high"] == pytest.approx(0)


def test_slope_difference_resamples_the_two_models_on_the_same_questions():
    correct = _improving()
    limits = [64, 128, 256, 512]
    # identical models: paired resampling gives exactly 0 (independent resampling would not)
    assert stats.slope_difference_interval(correct, correct, limits, resamples=300, seed=0) == (0.0, 0.0, 0.0)
    flat = np.repeat(correct[:, :1], 4, axis=1)  # the same questions right at every limit: slope 0
    diff, low, high = stats.slope_difference_interval(correct, flat, limits, resamples=500, seed=0)
    assert diff == pytest.approx(float(stats.scaling_slopes(limits, 100 * correct.mean(axis=0))))
    assert 0 < low <= diff <= high


def _rows(model, correct, limits, task="gsm8k"):
    return [{"model": model, "task": task, "id": str(q), "limit": limit, "correct": bool(correct[q, k]),
             "no_answer": False, "finished": True, "seconds": 0.1, "batch": "b", "tokens": limit}
            for q in range(correct.shape[0]) for k, limit in enumerate(limits)]


def test_summary_carries_intervals_grid_and_the_paired_test():
    limits = [64, 128, 256, 512]
    tuned = _improving(seed=1)
    base = np.zeros_like(tuned)
    base[:6] = 1  # base gets 6 questions right at every limit
    rows = _rows("base", base, limits) + _rows("tuned", tuned, limits)
    results = results_table(rows)
    assert {r["accuracy_low"] <= r["accuracy"] <= r["accuracy_high"] for r in results} == {True}
    summary = {r["model"]: r for r in summary_table(rows, results, resamples=500, seed=0)}
    assert summary["tuned"]["token_limits"] == "64-128-256-512" == summary["base"]["token_limits"]
    assert summary["base"]["paired_with"] == "" and summary["tuned"]["paired_with"] == "base"
    best = limits.index(summary["tuned"]["best_limit"])
    expected = stats.mcnemar_exact(tuned[:, best] > 0, base[:, 0] > 0)
    assert summary["tuned"]["mcnemar_p"] == pytest.approx(expected["p_value"]) and expected["p_value"] < 0.05
    assert summary["tuned"]["only_this"] == expected["only_this"] and summary["tuned"]["n_paired"] == 60
    assert summary["tuned"]["scaling_diff_low"] > 0
    sentences = comparison_sentences(list(summary.values()))
    assert len(sentences) == 1 and "not significant" not in sentences[0]


def test_the_report_says_when_a_difference_is_not_significant():
    limits = [64, 128]
    base = np.array([[1, 1], [0, 1], [0, 0], [1, 0], [0, 1], [0, 0]], dtype=float)
    tuned = np.array([[1, 1], [1, 1], [0, 0], [0, 0], [0, 1], [0, 1]], dtype=float)
    rows = _rows("base", base, limits) + _rows("tuned", tuned, limits)
    results = results_table(rows)
    summary = summary_table(rows, results, resamples=300, seed=0)
    text = summary_markdown(summary, results, mode="prefix")
    assert "**not significant**" in text and "McNemar exact p" in text and "interval contains 0" in text
    assert "64-128" in text
