"""The bench's tables: results.csv (per limit, with Wilson intervals), summary.csv (Table 1, with
bootstrap intervals and the paired test against the reference model) and summary.md (the same in
words, saying when a difference is not significant). Built from generations.jsonl rows only.

Beside every accuracy, what it should be read against (issue 26): the answer a model gives most
often and its share (a model that answers "no" to every boolq question scores the share of False
labels, which is skill at nothing), the majority-class baseline, and a flag when one answer covers
more than half of the questions. Scaling has two published readings, both reported: the
least-squares slope against the limit (`scaling`) and s1's mean slope over pairs of runs against
the compute they spent (`s1_scaling`). Accuracy under the other truncation rule (a prefix cut by
the limit has not answered) is a sensitivity column."""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from reasondiff.bench import stats
from reasondiff.bench.baselines import CONSTANT_ANSWER_SHARE, majority_baseline, top_answer

RESULT_COLUMNS = ["model", "task", "limit", "accuracy", "accuracy_low", "accuracy_high", "n", "correct", "no_answer",
                  "finished", "seconds", "seconds_per_question", "mean_tokens", "flexible_extract",
                  # issue 26 (appended, so readers of older files by column name keep working)
                  "accuracy_finished_only", "compute_tokens", "top_answer", "top_answer_share"]
SUMMARY_COLUMNS = ["model", "task", "performance", "performance_low", "performance_high", "scaling", "scaling_low",
                   "scaling_high", "best_limit", "token_limits", "n", "paired_with", "n_paired", "only_this",
                   "only_other", "mcnemar_p", "performance_diff", "scaling_diff", "scaling_diff_low",
                   "scaling_diff_high",
                   # issue 26 (appended)
                   "s1_scaling", "s1_scaling_low", "s1_scaling_high", "performance_finished_only", "top_answer",
                   "top_answer_share", "majority_answer", "majority_baseline", "constant_answerer"]


# --- Table 1's two numbers ---------------------------------------------------------------------------

def scaling_slope(token_limits: Sequence[float], accuracy_pct: Sequence[float]) -> float:
    """Least-squares slope of accuracy (%) against token limit: % per generated token (Table 1's
    "scaling"). NaN with fewer than two distinct limits, where no slope exists."""
    if len(token_limits) != len(accuracy_pct):
        raise ValueError("token_limits and accuracy_pct differ in length")
    return float(stats.scaling_slopes(token_limits, np.asarray(accuracy_pct, dtype=float)))


def performance(accuracy_pct: Sequence[float]) -> float:
    """Table 1's "performance": the best accuracy (%) over the token limits."""
    return max(accuracy_pct) if accuracy_pct else math.nan


def s1_scaling(compute_tokens: Sequence[float], accuracy_pct: Sequence[float]) -> float:
    """s1's "Scaling" (Muennighoff et al. 2025, eq. 2): the mean over all pairs of runs a < b of
    (accuracy(b) − accuracy(a)) / (b − a), a being the compute each run spent (thinking tokens per
    question, on average; `compute_tokens` of results.csv), in % per token. NaN with fewer than two
    distinct amounts of compute (every reply ended before the smallest limit)."""
    if len(compute_tokens) != len(accuracy_pct):
        raise ValueError("compute_tokens and accuracy_pct differ in length")
    return float(stats.s1_scaling_slopes(np.asarray(compute_tokens, dtype=float), np.asarray(accuracy_pct, dtype=float)))


def limit_grid(limits: Sequence[int]) -> str:
    """The grid a slope was fitted on, e.g. 128-256-512: slopes from different grids differ in kind."""
    return "-".join(str(limit) for limit in sorted(limits))


# --- results.csv -----------------------------------------------------------------------------------

def results_table(rows: Sequence[dict[str, Any]], *, confidence_level: float = 0.95) -> list[dict[str, Any]]:
    """Per (model, task, limit): accuracy (%) with its Wilson interval, counts, and wall time.

    `seconds` is the sweep's wall time to reach that limit for every question (per batch, the time
    its slowest member reached the limit, summed over batches): what a run at that limit alone
    costs. `flexible_extract` (%) is lm-eval's second gsm8k score (bench.protocol=lm_eval only).
    `accuracy_finished_only` (%): the accuracy if a prefix cut by the limit had no answer (the
    truncation sensitivity). `compute_tokens`: s1's test-time compute, thinking tokens per question
    (forced mode), or all generated tokens (prefix mode, where nothing else is spent). `top_answer`
    and `top_answer_share` (%): the answer given most often, and to which share of the questions."""
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["model"], row["task"], row["limit"])].append(row)
    table = []
    for (model, task, limit), members in sorted(groups.items()):
        by_batch: dict[str, float] = defaultdict(float)
        for row in members:
            by_batch[row["batch"]] = max(by_batch[row["batch"]], row["seconds"])
        n = len(members)
        correct = sum(bool(r["correct"]) for r in members)
        low, high = stats.wilson_interval(correct, n, confidence_level)
        flexible = [r["flexible_extract"] for r in members if "flexible_extract" in r]
        other_rule = [r.get("correct_finished_only") for r in members]
        top, share = top_answer([r.get("answer") for r in members])
        table.append({
            "model": model, "task": task, "limit": limit, "accuracy": round(100.0 * correct / n, 4),
            "accuracy_low": round(low, 4), "accuracy_high": round(high, 4), "n": n, "correct": correct,
            "no_answer": sum(bool(r["no_answer"]) for r in members),
            "finished": sum(bool(r.get("finished")) for r in members),
            "seconds": round(sum(by_batch.values()), 4),
            "seconds_per_question": round(sum(r["seconds"] for r in members) / n, 6),
            "mean_tokens": round(sum(r["tokens"] for r in members) / n, 3),
            "flexible_extract": round(100.0 * sum(map(bool, flexible)) / len(flexible), 4) if flexible else "",
            "accuracy_finished_only": ("" if None in other_rule else round(100.0 * sum(map(bool, other_rule)) / n, 4)),
            "compute_tokens": round(sum(r.get("thinking_tokens", r["tokens"]) for r in members) / n, 3),
            "top_answer": top, "top_answer_share": round(share, 4),
        })
    return table


# --- summary.csv -----------------------------------------------------------------------------------

def correctness(rows: Sequence[dict[str, Any]], model: str, task: str, limits: Sequence[int]) -> dict[str, list[bool]]:
    """{question id: [correct at each limit]} for the questions with a row at every limit."""
    return {qid: [bool(v) for v in values] for qid, values in cells_by_question(rows, model, task, limits,
                                                                                 lambda r: r["correct"]).items()}


def cells_by_question(rows: Sequence[dict[str, Any]], model: str, task: str, limits: Sequence[int],
                      value) -> dict[str, list[Any]]:
    """{question id: [value(row) at each limit]} for the questions with a row at every limit."""
    cells: dict[str, dict[int, Any]] = defaultdict(dict)
    for row in rows:
        if row["model"] == model and row["task"] == task:
            cells[row["id"]][row["limit"]] = value(row)
    return {qid: [by_limit[limit] for limit in limits] for qid, by_limit in cells.items()
            if all(limit in by_limit for limit in limits)}


def reference_model(models: Sequence[str]) -> str:
    """What the other models are compared with: base when swept, else the first model."""
    return "base" if "base" in models else models[0]


def summary_table(rows: Sequence[dict[str, Any]], results: Sequence[dict[str, Any]], *, resamples: int = 2000,
                  seed: int = 0, confidence_level: float = 0.95) -> list[dict[str, Any]]:
    """Table 1 per (model, task): performance (best accuracy %) and scaling (% per token) with
    bootstrap intervals over questions, the limit grid, and — for every model but the reference
    (base) — McNemar's exact test at each model's best limit and the bootstrap interval of the
    difference of slopes, both on the questions the two models share."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in results:
        groups[(row["model"], row["task"])].append(row)
    models = list(dict.fromkeys(r["model"] for r in results))
    paired_with = reference_model(models) if models else None
    summary = []
    for (model, task), members in sorted(groups.items()):
        members = sorted(members, key=lambda r: r["limit"])
        limits = [r["limit"] for r in members]
        accuracy = [r["accuracy"] for r in members]
        best = max(members, key=lambda r: (r["accuracy"], -r["limit"]))
        cells = correctness(rows, model, task, limits)
        matrix = np.array(list(cells.values()), dtype=float).reshape(len(cells), len(limits))
        entry = {"model": model, "task": task, "performance": performance(accuracy),
                 "scaling": scaling_slope(limits, accuracy), "best_limit": best["limit"],
                 "token_limits": limit_grid(limits), "n": members[0]["n"]}
        entry.update(stats.performance_and_scaling_intervals(matrix, limits, resamples=resamples, seed=seed,
                                                             confidence_level=confidence_level))
        entry.update(s1_scaling_entry(rows, members, model, task, matrix, cells, resamples=resamples, seed=seed,
                                      confidence_level=confidence_level))
        entry.update(baselines_entry(rows, members, best))
        entry.update({key: "" for key in SUMMARY_COLUMNS if key not in entry})
        summary.append(entry)
    by_key = {(s["model"], s["task"]): s for s in summary}
    for entry in summary:
        other = by_key.get((paired_with, entry["task"]))
        if other is None or entry["model"] == paired_with or other["token_limits"] != entry["token_limits"]:
            continue
        entry.update(paired_comparison(rows, entry, other, resamples=resamples, seed=seed,
                                       confidence_level=confidence_level))
    return summary


def s1_scaling_entry(rows: Sequence[dict[str, Any]], members: Sequence[dict[str, Any]], model: str, task: str,
                     matrix: np.ndarray, cells: dict[str, list[bool]], *, resamples: int, seed: int,
                     confidence_level: float) -> dict[str, Any]:
    """s1's Scaling over the runs at each limit (x = compute_tokens), with its bootstrap interval
    over questions."""
    limits = [r["limit"] for r in members]
    point = s1_scaling([r["compute_tokens"] for r in members], [r["accuracy"] for r in members])
    low = high = math.nan
    if not math.isnan(point) and len(cells) >= 2:
        compute = cells_by_question(rows, model, task, limits, lambda r: r.get("thinking_tokens", r["tokens"]))
        tokens = np.array([compute[qid] for qid in cells], dtype=float).reshape(matrix.shape)
        low, high = stats.s1_scaling_interval(matrix, tokens, resamples=resamples, seed=seed,
                                              confidence_level=confidence_level)
    return {"s1_scaling": point, "s1_scaling_low": low, "s1_scaling_high": high}


def baselines_entry(rows: Sequence[dict[str, Any]], members: Sequence[dict[str, Any]],
                    best: dict[str, Any]) -> dict[str, Any]:
    """At the best limit (where performance is read): the most common answer and its share, the
    majority-class baseline on the same questions, the constant-answerer flag; and the performance
    under the other truncation rule."""
    at_best = [r for r in rows if (r["model"], r["task"], r["limit"]) == (best["model"], best["task"], best["limit"])]
    majority, baseline = majority_baseline(best["task"], [r.get("reference") for r in at_best])
    other = [r.get("accuracy_finished_only", "") for r in members]
    return {"top_answer": best.get("top_answer", ""), "top_answer_share": best.get("top_answer_share", ""),
            "majority_answer": majority, "majority_baseline": round(baseline, 4) if not math.isnan(baseline) else "",
            "constant_answerer": num_or_nan(best.get("top_answer_share")) > CONSTANT_ANSWER_SHARE,
            "performance_finished_only": "" if "" in other else max(other)}


def num_or_nan(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def paired_comparison(rows: Sequence[dict[str, Any]], this: dict[str, Any], other: dict[str, Any], *,
                      resamples: int, seed: int, confidence_level: float) -> dict[str, Any]:
    """`this` model against `other` (the reference) on the questions both answered at every limit."""
    limits = [int(x) for x in this["token_limits"].split("-")]
    mine = correctness(rows, this["model"], this["task"], limits)
    theirs = correctness(rows, other["model"], other["task"], limits)
    shared = sorted(set(mine) & set(theirs))
    a = np.array([mine[q] for q in shared], dtype=bool).reshape(len(shared), len(limits))
    b = np.array([theirs[q] for q in shared], dtype=bool).reshape(len(shared), len(limits))
    mcnemar = stats.mcnemar_exact(a[:, limits.index(this["best_limit"])], b[:, limits.index(other["best_limit"])])
    diff, low, high = stats.slope_difference_interval(a, b, limits, resamples=resamples, seed=seed,
                                                      confidence_level=confidence_level)
    return {"paired_with": other["model"], "n_paired": len(shared), "only_this": mcnemar["only_this"],
            "only_other": mcnemar["only_other"], "mcnemar_p": mcnemar["p_value"],
            "performance_diff": this["performance"] - other["performance"], "scaling_diff": diff,
            "scaling_diff_low": low, "scaling_diff_high": high}


# --- files -----------------------------------------------------------------------------------------

def csv_text(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _num(value: Any, fmt: str) -> str:
    return "n/a" if value == "" or value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def _with_interval(value: Any, low: Any, high: Any, fmt: str) -> str:
    """`value [low, high]`, or `n/a` alone when there is no value."""
    shown = _num(value, fmt)
    return shown if shown == "n/a" else f"{shown} [{_num(low, fmt)}, {_num(high, fmt)}]"


def comparison_sentences(summary: Sequence[dict[str, Any]], confidence_level: float = 0.95) -> list[str]:
    """One sentence per compared (model, task): the difference, the test, and whether it is significant."""
    alpha = 1 - confidence_level
    by_key = {(s["model"], s["task"]): s for s in summary}
    out = []
    for s in summary:
        if s.get("paired_with") in ("", None):
            continue
        other = by_key[(s["paired_with"], s["task"])]
        significant = s["mcnemar_p"] < alpha
        verdict = "significant" if significant else "**not significant**"
        perf = (f"**{s['task']}**, {s['model']} vs {other['model']}: performance {s['performance']:.1f}% vs "
                f"{other['performance']:.1f}% (best limits {s['best_limit']} / {other['best_limit']}); the difference "
                f"of {s['performance_diff']:+.1f} points is {verdict} (McNemar exact p = {s['mcnemar_p']:.3g}: "
                f"{s['only_this']} of {s['n_paired']} questions right only for {s['model']}, {s['only_other']} only "
                f"for {other['model']}).")
        low, high = s["scaling_diff_low"], s["scaling_diff_high"]
        if isinstance(low, float) and not math.isnan(low):
            slope_significant = low > 0 or high < 0
            perf += (f" Scaling differs by {s['scaling_diff']:+.5f} %/token ({confidence_level:.0%} bootstrap interval "
                     f"{low:+.5f} to {high:+.5f}, limits {s['token_limits']}): "
                     f"{'significant' if slope_significant else '**not significant** (the interval contains 0)'}.")
        out.append(perf)
    return out


def _top(row: dict[str, Any]) -> str:
    return f"`{row['top_answer']}` ({_num(row.get('top_answer_share'), '.0f')})" if row.get("top_answer") else "–"


def constant_answer_sentence(row: dict[str, Any]) -> str | None:
    """For a flagged (model, task): what its accuracy is, in words, and what it must be read against."""
    if not row.get("constant_answerer") or row.get("constant_answerer") == "False":
        return None
    baseline = num_or_nan(row.get("majority_baseline"))
    against = (f"the majority-class baseline (always answering `{row['majority_answer']}`) is {baseline:.1f}%"
               if not math.isnan(baseline) else "no gold answers to compare it with")
    return (f"**{row['task']}, {row['model']}: answers `{row['top_answer']}` to {num_or_nan(row['top_answer_share']):.0f}% "
            f"of the questions** at its best limit ({row['best_limit']}), so its accuracy of "
            f"{num_or_nan(row['performance']):.1f}% mostly measures how often that answer is the gold one, not "
            f"reading or reasoning; {against}. Compare it with that baseline, not with chance.")


S1_SCALING_DEFINITION = (
    "scaling = least-squares slope of accuracy (%) against the token limit (% per generated token), "
    "comparable only between runs on the same limit grid; s1 scaling = s1's \"Scaling\" (Muennighoff et al. "
    "2025, eq. 2), the mean over all pairs of runs a < b of (accuracy(b) − accuracy(a)) / (b − a), where a is "
    "the compute the run spent (`compute_tokens`: thinking tokens per question in forced mode, generated tokens "
    "in prefix mode), also in % per token")


def summary_markdown(summary: Sequence[dict[str, Any]], results: Sequence[dict[str, Any]], *, mode: str,
                     protocol: str = "chat", confidence_level: float = 0.95, resamples: int = 2000) -> str:
    level = f"{confidence_level:.0%}"
    lines = ["# Token-budget sweep", "",
             f"Mode `{mode}`, protocol `{protocol}`. Performance = best accuracy (%) over the token limits; "
             f"{S1_SCALING_DEFINITION}. Brackets: "
             f"{level} bootstrap intervals over questions ({resamples} resamples); per limit, {level} Wilson "
             "intervals. A prefix cut by the limit is graded on the explicit answers it has written (a box, a "
             "marker), the same for every model; \"finished only\" is the accuracy if a cut prefix had no "
             "answer at all.", ""]
    flagged = [sentence for row in summary if (sentence := constant_answer_sentence(row))]
    if flagged:
        lines += ["## Constant answerers", ""] + [f"- {s}" for s in flagged] + [""]
    sentences = comparison_sentences(summary, confidence_level)
    if sentences:
        lines += ["## Paired comparisons", ""] + [f"- {s}" for s in sentences] + [""]
    if protocol == "lm_eval":
        lines += ["boolq under protocol `lm_eval` is scored by log-likelihood of \" yes\" / \" no\" without "
                  "generating, so its accuracy is the same at every limit by construction (its scaling is 0).", ""]
    lines += ["## Table 1", "",
              "| model | task | performance (%) | scaling (%/token) | s1 scaling (%/token) | best limit | limits | n | "
              "performance, finished only (%) |",
              "|---|---|---:|---:|---:|---:|---|---:|---:|"]
    for row in summary:
        lines.append(
            f"| {row['model']} | {row['task']} | {row['performance']:.1f} "
            f"[{_num(row['performance_low'], '.1f')}, {_num(row['performance_high'], '.1f')}] | "
            f"{_with_interval(row['scaling'], row['scaling_low'], row['scaling_high'], '.5f')} | "
            f"{_with_interval(row.get('s1_scaling'), row.get('s1_scaling_low'), row.get('s1_scaling_high'), '.5f')} | "
            f"{row['best_limit']} | {row['token_limits']} | {row['n']} | {_num(row.get('performance_finished_only'), '.1f')} |")
    lines += ["", "## Answers and baselines (at each model's best limit)", "",
              f"A model is flagged when one answer covers more than {CONSTANT_ANSWER_SHARE:.0f}% of the questions. "
              "The majority-class baseline is the accuracy of always giving the most common gold answer of these "
              "questions (boolq: the majority label; gsm8k / MATH: the most common gold number or expression, "
              "usually near 0).", "",
              "| model | task | performance (%) | top answer | its share (%) | majority-class baseline (%) | flag |",
              "|---|---|---:|---|---:|---:|---|"]
    for row in summary:
        flag = "**one answer > half**" if row.get("constant_answerer") is True else ""
        lines.append(f"| {row['model']} | {row['task']} | {row['performance']:.1f} | "
                     f"{'`' + row['top_answer'] + '`' if row.get('top_answer') else '–'} | "
                     f"{_num(row.get('top_answer_share'), '.1f')} | "
                     f"{_num(row.get('majority_baseline'), '.1f')} (`{row.get('majority_answer', '')}`) | {flag} |")
    lines += ["", "## Per limit", "",
              f"| model | task | limit | accuracy (%) [{level} Wilson] | finished only (%) | no answer | finished | "
              "top answer (share %) | compute (tokens) | s / question |",
              "|---|---|---:|---:|---:|---:|---:|---|---:|---:|"]
    for row in results:
        lines.append(f"| {row['model']} | {row['task']} | {row['limit']} | {row['accuracy']:.1f} "
                     f"[{_num(row['accuracy_low'], '.1f')}, {_num(row['accuracy_high'], '.1f')}] | "
                     f"{_num(row.get('accuracy_finished_only'), '.1f')} | "
                     f"{row['no_answer']}/{row['n']} | {row['finished']}/{row['n']} | "
                     f"{_top(row)} | "
                     f"{_num(row.get('compute_tokens'), '.1f')} | {row['seconds_per_question']:.3f} |")
    return "\n".join(lines) + "\n"
