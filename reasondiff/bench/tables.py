"""The bench's tables: results.csv (per limit, with Wilson intervals), summary.csv (Table 1, with
bootstrap intervals and the paired test against the reference model) and summary.md (the same in
words, saying when a difference is not significant). Built from generations.jsonl rows only."""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from reasondiff.bench import stats

RESULT_COLUMNS = ["model", "task", "limit", "accuracy", "accuracy_low", "accuracy_high", "n", "correct", "no_answer",
                  "finished", "seconds", "seconds_per_question", "mean_tokens", "flexible_extract"]
SUMMARY_COLUMNS = ["model", "task", "performance", "performance_low", "performance_high", "scaling", "scaling_low",
                   "scaling_high", "best_limit", "token_limits", "n", "paired_with", "n_paired", "only_this",
                   "only_other", "mcnemar_p", "performance_diff", "scaling_diff", "scaling_diff_low",
                   "scaling_diff_high"]


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


def limit_grid(limits: Sequence[int]) -> str:
    """The grid a slope was fitted on, e.g. 128-256-512: slopes from different grids differ in kind."""
    return "-".join(str(limit) for limit in sorted(limits))


# --- results.csv -----------------------------------------------------------------------------------

def results_table(rows: Sequence[dict[str, Any]], *, confidence_level: float = 0.95) -> list[dict[str, Any]]:
    """Per (model, task, limit): accuracy (%) with its Wilson interval, counts, and wall time.

    `seconds` is the sweep's wall time to reach that limit for every question (per batch, the time
    its slowest member reached the limit, summed over batches): what a run at that limit alone
    costs. `flexible_extract` (%) is lm-eval's second gsm8k score (bench.protocol=lm_eval only)."""
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
        table.append({
            "model": model, "task": task, "limit": limit, "accuracy": round(100.0 * correct / n, 4),
            "accuracy_low": round(low, 4), "accuracy_high": round(high, 4), "n": n, "correct": correct,
            "no_answer": sum(bool(r["no_answer"]) for r in members),
            "finished": sum(bool(r.get("finished")) for r in members),
            "seconds": round(sum(by_batch.values()), 4),
            "seconds_per_question": round(sum(r["seconds"] for r in members) / n, 6),
            "mean_tokens": round(sum(r["tokens"] for r in members) / n, 3),
            "flexible_extract": round(100.0 * sum(map(bool, flexible)) / len(flexible), 4) if flexible else "",
        })
    return table


# --- summary.csv -----------------------------------------------------------------------------------

def correctness(rows: Sequence[dict[str, Any]], model: str, task: str, limits: Sequence[int]) -> dict[str, list[bool]]:
    """{question id: [correct at each limit]} for the questions with a row at every limit."""
    cells: dict[str, dict[int, bool]] = defaultdict(dict)
    for row in rows:
        if row["model"] == model and row["task"] == task:
            cells[row["id"]][row["limit"]] = bool(row["correct"])
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


def summary_markdown(summary: Sequence[dict[str, Any]], results: Sequence[dict[str, Any]], *, mode: str,
                     protocol: str = "chat", confidence_level: float = 0.95, resamples: int = 2000) -> str:
    level = f"{confidence_level:.0%}"
    lines = ["# Token-budget sweep", "",
             f"Mode `{mode}`, protocol `{protocol}`. Performance = best accuracy (%) over the token limits; "
             "scaling = least-squares slope of accuracy (%) against the token limit (% per generated token), "
             "comparable only between runs on the same limit grid. Brackets: "
             f"{level} bootstrap intervals over questions ({resamples} resamples); per limit, {level} Wilson "
             "intervals.", ""]
    sentences = comparison_sentences(summary, confidence_level)
    if sentences:
        lines += ["## Paired comparisons", ""] + [f"- {s}" for s in sentences] + [""]
    if protocol == "lm_eval":
        lines += ["boolq under protocol `lm_eval` is scored by log-likelihood of \" yes\" / \" no\" without "
                  "generating, so its accuracy is the same at every limit by construction (its scaling is 0).", ""]
    lines += ["## Table 1", "", "| model | task | performance (%) | scaling (%/token) | best limit | limits | n |",
              "|---|---|---:|---:|---:|---|---:|"]
    for row in summary:
        lines.append(
            f"| {row['model']} | {row['task']} | {row['performance']:.1f} "
            f"[{_num(row['performance_low'], '.1f')}, {_num(row['performance_high'], '.1f')}] | "
            f"{_num(row['scaling'], '.5f')} [{_num(row['scaling_low'], '.5f')}, {_num(row['scaling_high'], '.5f')}] | "
            f"{row['best_limit']} | {row['token_limits']} | {row['n']} |")
    lines += ["", "## Per limit", "",
              f"| model | task | limit | accuracy (%) [{level} Wilson] | no answer | finished | s / question |",
              "|---|---|---:|---:|---:|---:|---:|"]
    for row in results:
        lines.append(f"| {row['model']} | {row['task']} | {row['limit']} | {row['accuracy']:.1f} "
                     f"[{_num(row['accuracy_low'], '.1f')}, {_num(row['accuracy_high'], '.1f')}] | "
                     f"{row['no_answer']}/{row['n']} | {row['finished']}/{row['n']} | "
                     f"{row['seconds_per_question']:.3f} |")
    return "\n".join(lines) + "\n"
