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


# --- issue 26: s1's Scaling beside the least-squares slope ------------------------------------------

def test_s1_scaling_is_the_mean_slope_over_all_pairs_of_runs():
    from reasondiff.bench.tables import s1_scaling, scaling_slope

    # runs that spent 100, 200 and 400 tokens at 10, 30 and 40 %: pair slopes 20/100, 30/300, 10/200
    assert s1_scaling([100, 200, 400], [10, 30, 40]) == pytest.approx((0.2 + 0.1 + 0.05) / 3)
    # the least-squares slope over the same points is another number (Sxy 13000/3, Sxx 140000/3)
    assert scaling_slope([100, 200, 400], [10, 30, 40]) == pytest.approx(13000 / 140000)
    # order of the runs does not matter; a falling curve has a negative Scaling
    assert s1_scaling([400, 100, 200], [40, 10, 30]) == pytest.approx(0.35 / 3)
    assert s1_scaling([100, 300], [50, 20]) == pytest.approx(-30 / 200)
    # runs that spent the same compute are one point of s1's set (greedy: the same generations)
    assert s1_scaling([100, 150, 150], [10, 30, 30]) == pytest.approx(20 / 50)
    assert math.isnan(s1_scaling([64, 64, 64], [20, 20, 20]))  # every reply ended before the smallest limit
    assert math.isnan(s1_scaling([256], [40]))
    # vectorised over leading axes, as the bootstrap calls it
    batch = stats.s1_scaling_slopes(np.array([[100, 200, 400], [1, 1, 1]]), np.array([[10, 30, 40], [5, 5, 5]]))
    assert batch[0] == pytest.approx(0.35 / 3) and math.isnan(batch[1])


def test_s1_scaling_interval_resamples_questions_and_holds_the_point():
    rng = np.random.default_rng(0)
    limits = [64, 128, 256]
    lengths = rng.integers(20, 400, size=80)
    tokens = np.minimum(lengths[:, None], np.array(limits)[None, :]).astype(float)  # prefix mode
    correct = (rng.random((80, 3)) < np.array([0.2, 0.4, 0.6])).astype(float)
    point = float(stats.s1_scaling_slopes(tokens.mean(axis=0), 100 * correct.mean(axis=0)))
    low, high = stats.s1_scaling_interval(correct, tokens, resamples=500, seed=0)
    assert low < point < high and low > 0
    assert stats.s1_scaling_interval(correct, tokens, resamples=500, seed=0) == (low, high)  # seeded


# --- issue 26: constant answerers and the majority-class baseline ------------------------------------

def _answer_rows(model, task, answers, references, *, limits=(64, 128), finished=True):
    """Rows that give `answers` (one per question) at every limit; correct by the gold labels."""
    from reasondiff.bench.baselines import answer_key, gold_answer

    rows = []
    for q, (answer, reference) in enumerate(zip(answers, references, strict=True)):
        for limit in limits:
            correct = answer is not None and answer_key(answer) == gold_answer(task, reference)
            rows.append({"model": model, "task": task, "id": str(q), "limit": limit, "answer": answer,
                         "reference": reference, "correct": correct, "correct_finished_only": correct and finished,
                         "no_answer": answer is None, "finished": finished, "seconds": 0.1, "batch": "b",
                         "tokens": limit // 2})
    return rows


def test_a_constant_answerer_is_flagged_against_the_majority_baseline():
    labels = [True] * 7 + [False] * 3  # always "yes" scores 70%
    rows = (_answer_rows("base", "boolq", ["no"] * 10, labels)
            + _answer_rows("tuned", "boolq", ["yes", "no", "yes", None, "no", "yes", "no", "yes", "no", "yes"], labels)
            + _answer_rows("base", "gsm8k", ["18", "$18.00", "5", None], ["#### 18", "#### 18", "#### 5", "#### 7"])
            + _answer_rows("tuned", "gsm8k", ["18", "1,000", "4", "7"], ["#### 18", "#### 1000", "#### 5", "#### 7"]))
    results = results_table(rows)
    summary = {(r["model"], r["task"]): r for r in summary_table(rows, results, resamples=200, seed=0)}
    base = summary[("base", "boolq")]
    assert base["performance"] == 30.0  # the share of False labels: skill at nothing
    assert (base["top_answer"], base["top_answer_share"]) == ("no", 100.0)
    assert (base["majority_answer"], base["majority_baseline"]) == ("yes", 70.0)
    assert base["constant_answerer"] is True
    tuned = summary[("tuned", "boolq")]  # "yes" to 5 of 10: exactly half is not more than half
    assert (tuned["top_answer"], tuned["top_answer_share"], tuned["constant_answerer"]) == ("yes", 50.0, False)
    # open answers: "$18.00" and "18" are one answer; no answer counts in the total, never as the top one
    gsm = summary[("base", "gsm8k")]
    assert (gsm["top_answer"], gsm["top_answer_share"], gsm["constant_answerer"]) == ("18", 50.0, False)
    assert (gsm["majority_answer"], gsm["majority_baseline"]) == ("18", 50.0)
    assert summary[("tuned", "gsm8k")]["majority_baseline"] == 25.0  # four different golds
    per_limit = {(r["model"], r["task"], r["limit"]): r for r in results}
    assert per_limit[("base", "boolq", 64)]["top_answer_share"] == 100.0
    text = summary_markdown(list(summary.values()), results, mode="prefix")
    assert "## Constant answerers" in text
    flagged = [line for line in text.splitlines() if line.startswith("- **boolq, base")]
    assert len(flagged) == 1 and "70.0%" in flagged[0] and "not with chance" in flagged[0]
    assert not any(line.startswith("- **boolq, tuned") for line in text.splitlines())


def test_the_truncation_sensitivity_column():
    labels = [True, True, False, False]
    rows = (_answer_rows("base", "boolq", ["yes", "yes", "no", "yes"], labels, limits=(64,), finished=False)
            + _answer_rows("base", "boolq", ["yes", "yes", "no", "yes"], labels, limits=(128,), finished=True))
    results = {r["limit"]: r for r in results_table(rows)}
    assert results[64]["accuracy"] == 75.0 and results[64]["accuracy_finished_only"] == 0.0
    assert results[128]["accuracy_finished_only"] == results[128]["accuracy"] == 75.0
    (summary,) = summary_table(rows, list(results.values()), resamples=100, seed=0)
    assert summary["performance_finished_only"] == 75.0
    assert results[64]["compute_tokens"] == 32.0 and summary["s1_scaling"] == 0.0  # flat over 32 -> 64 tokens
