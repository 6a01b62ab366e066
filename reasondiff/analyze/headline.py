"""The headline summary at the top of report.md: a few sentences written from the numbers.

Every sentence is generated from a CSV the stages wrote (bench/summary.csv with its bootstrap
intervals and McNemar test, analyze/ce_recovery.csv, class_counts.csv, latent_scaling_summary.csv,
latents.csv, latent_logits.csv), never typed by hand, so the summary cannot drift from the tables
below it. A missing file drops its sentence; nothing is guessed.

Sentences, in order: one per benchmark task, the largest significant difference first (did the
fine-tune help, by how much, with intervals and the paired test; how accuracy scales with the limit,
in Table 1's %/token over its grid, and whether unanswered questions make that slope), CE recovered, the latent classes, Latent
Scaling, and the most notable latents (the most reasoning-selective tuned-leaning latent and the
most frequent base-leaning one, with the tokens their decoder directions promote).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from reasondiff.analyze.latent_page import format_unit_interval

ALPHA = 0.05
FREQUENCY_FLOOR = 1e-4
"""Added to both frequencies of the reasoning / general ratio so a latent that fires once is not 'infinitely' selective."""


def _rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def num(value: Any) -> float:
    """A CSV cell as a float (NaN when empty or not a number)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def pct(value: Any, digits: int = 1) -> str:
    """A percentage that is already in percent (bench) as text, e.g. 17.5%."""
    v = num(value)
    return "n/a" if math.isnan(v) else f"{v:.{digits}f}%"


def interval(low: Any, high: Any, fmt: str = ".1f") -> str:
    lo, hi = num(low), num(high)
    return "" if math.isnan(lo) or math.isnan(hi) else f" [{lo:{fmt}}, {hi:{fmt}}]"


def _p_value(p: float) -> str:
    return f"p = {p:.2g}" if p >= 0.001 else "p < 0.001"


def _grid(row: Mapping[str, str]) -> list[int]:
    """The token limits of a summary row (`16-32-48-64-80`), empty when not recorded."""
    try:
        return sorted(int(v) for v in str(row.get("token_limits", "")).split("-") if v.strip())
    except ValueError:
        return []


def _effect_order(row: Mapping[str, str], base: Mapping[str, str]) -> tuple[bool, float]:
    """Sort key: significant differences first, then the larger |difference| first."""
    diff = num(row.get("performance_diff"))
    if math.isnan(diff):
        diff = num(row["performance"]) - num(base["performance"])
    p = num(row.get("mcnemar_p"))
    return (not (p < ALPHA), -abs(diff) if not math.isnan(diff) else 0.0)


def _unanswered_limits(no_answer: Mapping[tuple[str, str, str], tuple[int, int]], model: str, task: str,
                       grid: Sequence[int]) -> list[tuple[int, int, int]]:
    """(limit, no answer, n) for the limits where at least half the replies give no answer."""
    found = []
    for limit in grid:
        missing = no_answer.get((model, task, str(limit)))
        if missing and missing[1] and missing[0] / missing[1] >= 0.5:
            found.append((limit, *missing))
    return found


def bench_sentences(summary: Sequence[Mapping[str, str]], results: Sequence[Mapping[str, str]] = (), *,
                    reference: str = "base") -> list[str]:
    """One sentence per task comparing each non-reference model with the reference (base), the
    largest significant difference first: best accuracy with bootstrap intervals, McNemar's exact
    test, missing answers when they dominate, and the scaling slopes in Table 1's unit (% per token)
    over the grid they were fitted on. A slope that rises from limits where most replies give no
    answer is said to be that (unfinished traces), not a gain in accuracy."""
    by_key = {(r["model"], r["task"]): r for r in summary}
    no_answer = {(r["model"], r["task"], str(r["limit"])): (int(num(r["no_answer"])), int(num(r["n"])))
                 for r in results if r.get("no_answer", "") != "" and r.get("n", "") != ""}
    compared = [row for row in summary if row["model"] != reference and (reference, row["task"]) in by_key]
    compared.sort(key=lambda row: _effect_order(row, by_key[(reference, row["task"])]))
    out = []
    for row in compared:
        base, task, model = by_key[(reference, row["task"])], row["task"], row["model"]
        diff = num(row.get("performance_diff"))
        if math.isnan(diff):
            diff = num(row["performance"]) - num(base["performance"])
        p = num(row.get("mcnemar_p"))
        if math.isnan(p):
            verdict = "no paired test available"
        elif p < ALPHA:
            verdict = f"{'a significant gain' if diff > 0 else 'a significant loss'} (McNemar exact {_p_value(p)})"
        else:
            verdict = f"not significant (McNemar exact {_p_value(p)})"
        sentence = (f"On {task} (n = {row['n']}), {model} reaches {pct(row['performance'])}"
                    f"{interval(row.get('performance_low'), row.get('performance_high'))} at its best limit "
                    f"({row['best_limit']} tokens) against {pct(base['performance'])}"
                    f"{interval(base.get('performance_low'), base.get('performance_high'))} for {reference}: "
                    f"{diff:+.1f} points, {verdict}")
        sentence += "".join(constant_answer_note(r) for r in (row, base))
        missing = no_answer.get((model, task, str(row["best_limit"])))
        if missing and missing[1] and missing[0] / missing[1] >= 0.5:
            sentence += f"; {missing[0]} of its {missing[1]} replies there give no answer"
        slope, low, high = num(row.get("scaling")), num(row.get("scaling_diff_low")), num(row.get("scaling_diff_high"))
        if not math.isnan(slope):
            grid = _grid(row)
            over = f" over the {grid[0]}-{grid[-1]}-token grid" if len(grid) > 1 else ""
            sentence += (f"; its accuracy scales at {slope:+.3f}%/token{over} (Table 1's scaling; {reference} "
                         f"{num(base.get('scaling')):+.3f})")
            if not (math.isnan(low) or math.isnan(high)):
                significant = low > 0 or high < 0
                sentence += (f", a difference of {num(row.get('scaling_diff')):+.3f} [{low:+.3f}, {high:+.3f}] "
                             f"%/token, {'significant' if significant else 'not significant'}")
            unanswered = _unanswered_limits(no_answer, model, task, grid)
            if unanswered and slope > 0 and unanswered[0][0] == grid[0]:
                counts = " and ".join(f"{na}/{n} at {limit} tokens" for limit, na, n in unanswered)
                sentence += (f"; the slope is driven by unanswered questions (no answer in {counts}: traces cut "
                             "before they finish), so it measures answers arriving within the limit"
                             + (f", not a gain over {reference}" if not (p < ALPHA and diff > 0) else ""))
        out.append(sentence + ".")
    return out


def constant_answer_note(row: Mapping[str, str]) -> str:
    """'; base answers "no" to 100% of the questions there (majority-class baseline 66.0%)' for a
    model bench flagged (summary.csv `constant_answerer`, issue 26.2): its accuracy is read against
    that baseline, not against chance. Empty for other rows and for summaries written before the flag."""
    if str(row.get("constant_answerer", "")) != "True":
        return ""
    baseline = num(row.get("majority_baseline"))
    against = f"majority-class baseline {baseline:.1f}%" if not math.isnan(baseline) else "no majority baseline"
    return (f"; {row['model']} answers \"{row.get('top_answer', '')}\" to {num(row.get('top_answer_share')):.0f}% "
            f"of the questions there ({against}), so its accuracy is mostly that answer's share of the labels")


def ce_sentence(ce_rows: Sequence[Mapping[str, str]]) -> str | None:
    """CE recovered per model on general text (paper convention, sink-preserving beside it), and on reasoning."""
    by = {(r["text"], r["convention"], r["model"]): r for r in ce_rows}

    def shown(text: str, convention: str, model: str, with_interval: bool = True) -> str | None:
        row = by.get((text, convention, model))
        if row is None:
            return None
        value = 100 * num(row["ce_recovered"])
        lo, hi = 100 * num(row.get("ce_recovered_ci_low")), 100 * num(row.get("ce_recovered_ci_high"))
        return f"{value:.1f}%" + (f" [{lo:.1f}, {hi:.1f}]" if with_interval and not math.isnan(lo) else "")

    models = list(dict.fromkeys(r["model"] for r in ce_rows))
    convention = "paper" if any(k[1] == "paper" for k in by) else (ce_rows[0]["convention"] if ce_rows else None)
    general = [(m, shown("general", convention, m)) for m in models]
    if not ce_rows or not all(v for _, v in general):
        return None
    sentence = ("Spliced back into each model, the crosscoder's reconstruction recovers "
                + " and ".join(f"{v} of the CE loss for {m}" for m, v in general)
                + f" on held-out general text ({convention} convention, 95% bootstrap intervals)")
    other = [(m, shown("general", "sink_preserving", m, False)) for m in models]
    if convention == "paper" and all(v for _, v in other):
        sentence += "; " + " and ".join(f"{v}" for _, v in other) + " under the sink-preserving convention"
    reasoning = [(m, shown("reasoning", convention, m, False)) for m in models]
    if all(v for _, v in reasoning):
        source = by[("reasoning", convention, models[0])].get("text_source")
        sentence += "; " + " and ".join(f"{v}" for _, v in reasoning) + " on reasoning conversations" + (
            f" ({source}{': the fine-tune trained on them' if source == 'trained rows' else ''})" if source else "")
    return sentence + "."


def class_sentence(counts: Sequence[Mapping[str, str]], thresholds: Mapping[str, float] | None = None) -> str | None:
    if not counts:
        return None
    n = {r["class"]: int(num(r["n_latents"])) for r in counts}
    total = sum(n.values())
    t = thresholds or {}
    bands = {"shared": f" ({t['shared_min']:g} ≤ r ≤ {t['shared_max']:g})" if "shared_min" in t else "",
             "base_only": f" (r ≤ {t['base_only_max']:g})" if "base_only_max" in t else "",
             "tuned_only": f" (r ≥ {t['tuned_only_min']:g})" if "tuned_only_min" in t else ""}
    parts = [f"{n.get('shared', 0)} ({100 * n.get('shared', 0) / max(total, 1):.1f}%) are shared{bands['shared']}",
             f"{n.get('base_only', 0)} base-only{bands['base_only']}", f"{n.get('tuned_only', 0)} tuned-only{bands['tuned_only']}",
             f"{n.get('other', 0)} in between"]
    if n.get("designated_shared"):
        parts.append(f"{n['designated_shared']} designated shared")
    parts.append(f"{n.get('dead', 0)} dead")
    sentence = f"Of the crosscoder's {total} latents, " + ", ".join(parts[:-1]) + f" and {parts[-1]}"
    if all("n_latents_delta" in r and r["n_latents_delta"] != "" for r in counts):
        d = {r["class"]: int(num(r["n_latents_delta"])) for r in counts}
        sentence += (f"; by Minder et al.'s Δ, {d.get('shared', 0)} shared, {d.get('base_only', 0)} base-only and "
                     f"{d.get('tuned_only', 0)} tuned-only")
    return sentence + "."


def scaling_sentence(summary: Sequence[Mapping[str, str]]) -> str | None:
    rows = [r for r in summary if int(num(r.get("n_live_latents", 0)) or 0) > 0]
    if not rows:
        return None
    parts = []
    for r in rows:
        side = r["class"].replace("_only", "")
        parts.append(f"{r['n_truly_specific']} of {r['n_live_latents']} {side}-only latents are truly {side}-specific "
                     f"(ν_error ≤ {num(r['specific_ratio_max']):g}; median ν_error {num(r['median_nu_error']):.2f})")
    return "Latent Scaling (Minder et al.): " + "; ".join(parts) + "."


def _token_list(tokens: Sequence[str]) -> str:
    return ", ".join(f"`{repr(t)[1:-1]}`" for t in tokens)


def notable_latents(latents: Sequence[Mapping[str, str]], shown: set[int] | None = None) -> dict[str, Mapping[str, str]]:
    """{"tuned": the live tuned-only latent (else one of the ten highest r above 0.7) that is most
    selective for reasoning text, "base": the live base-only latent (else low r) that fires most
    often on general text}, among the `shown` latents (latents.html's) when given."""
    live = [r for r in latents if r.get("class") not in ("dead", "designated_shared", None)
            and (shown is None or int(num(r["latent"])) in shown)]
    out: dict[str, Mapping[str, str]] = {}
    tuned = [r for r in live if r.get("class") == "tuned_only"] or \
        sorted((r for r in live if num(r.get("relative_norm")) > 0.7), key=lambda r: -num(r["relative_norm"]))[:10]
    base = [r for r in live if r.get("class") == "base_only"] or \
        sorted((r for r in live if num(r.get("relative_norm")) < 0.3), key=lambda r: num(r["relative_norm"]))[:10]

    def selectivity(r: Mapping[str, str]) -> float:
        reasoning, general = num(r.get("freq_reasoning")), num(r.get("freq_general"))
        return -math.inf if math.isnan(reasoning) else (reasoning + FREQUENCY_FLOOR) / (general + FREQUENCY_FLOOR)

    if tuned:
        out["tuned"] = max(tuned, key=selectivity)
    if base:
        out["base"] = max(base, key=lambda r: num(r.get("freq_general")))
    return out


def top_tokens(logit_rows: Sequence[Mapping[str, str]], latent: int, model: str, k: int = 3) -> list[str]:
    rows = [r for r in logit_rows if int(num(r["latent"])) == latent and r["model"] == model
            and r["direction"] == "promoted"]
    return [r["token"] for r in sorted(rows, key=lambda r: int(num(r["rank"])))[:k]]


def notable_sentence(latents: Sequence[Mapping[str, str]], logit_rows: Sequence[Mapping[str, str]]) -> str | None:
    shown = {int(num(r["latent"])) for r in logit_rows} or None
    found = notable_latents(latents, shown)
    parts = []
    if "tuned" in found:
        r = found["tuned"]
        latent = int(num(r["latent"]))
        text = (f"latent {latent} ({r['class']}, r = {format_unit_interval(num(r['relative_norm']))}) is the "
                "tuned-leaning latent most "
                f"selective for reasoning text, firing on {100 * num(r.get('freq_reasoning')):.2f}% of reasoning tokens "
                f"against {100 * num(r['freq_general']):.2f}% of general text")
        tokens = top_tokens(logit_rows, latent, "tuned")
        parts.append(text + (f", and in the tuned model its decoder direction promotes {_token_list(tokens)}" if tokens else ""))
    if "base" in found:
        r = found["base"]
        latent = int(num(r["latent"]))
        text = (f"latent {latent} ({r['class']}, r = {format_unit_interval(num(r['relative_norm']))}) is the most "
                "frequent base-leaning "
                f"latent ({100 * num(r['freq_general']):.2f}% of general-text tokens)")
        tokens = top_tokens(logit_rows, latent, "base")
        parts.append(text + (f", promoting {_token_list(tokens)} in the base model" if tokens else ""))
    if not parts:
        return None
    return "Most notable: " + "; ".join(parts) + " (latents.html has their contexts)."


def analyze_thresholds(analyze_dir: Path) -> dict[str, float] | None:
    """The class bands the analyze run used (its .hydra/config.yaml)."""
    config = Path(analyze_dir) / ".hydra" / "config.yaml"
    if not config.is_file():
        return None
    from omegaconf import OmegaConf

    node = OmegaConf.load(config).get("analyze", {})
    keys = ("base_only_max", "shared_min", "shared_max", "tuned_only_min")
    return {k: float(node[k]) for k in keys if k in node} or None


def headline_sentences(exp_dir: Path, analyze_dir: Path, *, thresholds: Mapping[str, float] | None = None) -> list[str]:
    """The summary, one string per sentence, from whatever files exist (the class bands from
    `thresholds`, else from the analyze run's config)."""
    exp_dir, analyze_dir = Path(exp_dir), Path(analyze_dir)
    thresholds = thresholds or analyze_thresholds(analyze_dir)
    sentences = bench_sentences(_rows(exp_dir / "bench" / "summary.csv"), _rows(exp_dir / "bench" / "results.csv"))
    for sentence in (ce_sentence(_rows(analyze_dir / "ce_recovery.csv")),
                     class_sentence(_rows(analyze_dir / "class_counts.csv"), thresholds),
                     scaling_sentence(_rows(analyze_dir / "latent_scaling_summary.csv")),
                     notable_sentence(_rows(analyze_dir / "latents.csv"), _rows(analyze_dir / "latent_logits.csv"))):
        if sentence:
            sentences.append(sentence)
    return sentences
