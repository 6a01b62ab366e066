"""intervene's section of the report (report_section.md, links relative to the intervene directory): analyze's
report includes it (reasondiff/analyze/report.py `later_stage_sections`), and intervene rebuilds that report
when it finishes.

The headline sentences are written from the numbers: which selection closes the most KL per latent, whether
each selection beats its random sets (its interval's lower end above every random set's value at the same
size; a steering direction likewise against its random directions of the same norm at the same α), how close the crosscoder gets to the whole-residual ceiling, the ADL's top tokens, and what the
intervened models do in the budget sweep (opens the thinking, accuracy, McNemar against the un-intervened model).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from reasondiff.core import artifacts
from reasondiff.intervene.adl import top_tokens
from reasondiff.intervene.tables import read_csv


def _f(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _pct(value: Any) -> str:
    v = _f(value)
    return "n/a" if v != v else f"{100 * v:.1f}%"


def _interval(row: dict[str, Any]) -> str:
    return f"{_pct(row['value'])} [{_pct(row['ci_low'])}, {_pct(row['ci_high'])}]"


def random_values(rows: list[dict[str, Any]], own: dict[str, Any]) -> list[float]:
    """The values of the random controls of `own` (a selected set or a steering direction): same text, kind,
    measure, size and α, matched to its selection (NaNs dropped)."""
    randoms = [_f(r["value"]) for r in rows if r["text"] == own["text"] and r["kind"] == own["kind"]
               and r["selection"] == "random" and r["matched_to"] == own["selection"] and r["size"] == own["size"]
               and r.get("alpha", "") == own.get("alpha", "") and r["measure"] == own["measure"]]
    return [v for v in randoms if v == v]


def beats_random(rows: list[dict[str, Any]], own: dict[str, Any]) -> tuple[bool, float]:
    """(the set's or direction's 95% interval lies above every matched random set's or direction's value at its
    size and α, the best random value)."""
    randoms = random_values(rows, own)
    best = max(randoms) if randoms else math.nan
    return bool(randoms) and _f(own["ci_low"]) > best, best


def steering_against_random(rows: list[dict[str, Any]], text: str, measure: str = "kl_closed") -> list[dict[str, Any]]:
    """Per steering direction and α on `text`: its row, the band (min, max) of its random directions of the same
    norm (NaN without any) and whether it beats them (`beats_random`)."""
    out = []
    for own in rows:
        if own["kind"] == "steer" and own["selection"] != "random" and own["text"] == text and own["measure"] == measure:
            randoms = random_values(rows, own)
            out.append({"row": own, "low": min(randoms) if randoms else math.nan,
                        "high": max(randoms) if randoms else math.nan, "beats": beats_random(rows, own)[0]})
    return out


def steering_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: KL closed by each steering direction at each α against its random directions of the same norm."""
    text = "reasoning" if any(r["text"] == "reasoning" for r in rows) else "general"
    lines = [f"| direction | α | KL closed ({text}) | random directions (min – max) | beats random |", "|---|---|---|---|---|"]
    for s in steering_against_random(rows, text):
        band = "—" if s["low"] != s["low"] else f"{_pct(s['low'])} – {_pct(s['high'])}"
        lines.append(f"| `{s['row']['selection']}` | {_f(s['row']['alpha']):g} | {_interval(s['row'])} | {band} | "
                     f"{'yes' if s['beats'] else 'no'} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def scan_closed(scan_dir: Path, hook: str, text: str) -> float:
    """The scan's own fraction of KL(base ‖ tuned) closed by the whole residual at `hook` (NaN without a scan)."""
    path = scan_dir / "scan.csv"
    if not path.is_file():
        return math.nan
    for r in read_csv(path):
        if r.get("text") == text and r.get("site") == "resid" and r.get("hook") == hook:
            return _f(r.get("closed_tuned_into_base"))
    return math.nan


def headline(rows: list[dict[str, Any]], best: dict[str, Any] | None, *, scan: float = math.nan) -> list[str]:
    texts = {r["text"] for r in rows}
    text = "reasoning" if "reasoning" in texts else "general"
    out = []
    own = [r for r in rows if r["text"] == text and r["kind"] == "patch_set" and r["set_index"] == 0
           and r["measure"] == "kl_closed" and r["selection"] not in ("all", "random") and _f(r["value"]) == _f(r["value"])]
    ceiling = [r for r in rows if r["text"] == text and r["kind"] == "patch_residual" and r["measure"] == "kl_closed"]
    every = [r for r in rows if r["text"] == text and r["kind"] == "patch_set" and r["selection"] == "all"
             and r["measure"] == "kl_closed"]
    if ceiling:
        line = f"Patching the whole residual stream at the hook closes {_interval(ceiling[0])} of KL(base ‖ tuned) on {text} text"
        if scan == scan:
            line += f" (the layer scan measured {_pct(scan)} at this layer on its own contexts)"
        if every:
            line += f"; patching every crosscoder latent closes {_interval(every[0])}"
        out.append(line + ".")
    if own:
        per_latent = max(own, key=lambda r: _f(r["value"]) / max(int(r["size"]), 1))
        out.append(f"Most KL closed per latent: `{per_latent['selection']}` at N = {per_latent['size']} "
                   f"({_interval(per_latent)}, {_f(per_latent['value']) / max(int(per_latent['size']), 1):.2%} per latent).")
    if best is not None:
        won, random_best = beats_random(rows, best)
        verdict = "beats" if won else "does **not** beat"
        out.append(f"Best selection at its largest size: `{best['selection']}` (N = {best['size']}) closes "
                   f"{_interval(best)}; it {verdict} its frequency-matched random sets (best random set: "
                   f"{_pct(random_best)}).")
        beaten = []
        for r in own:
            if beats_random(rows, r)[0]:
                beaten.append(f"`{r['selection']}` N={r['size']}")
        out.append("Selections whose 95% interval lies above every matched random set: "
                   + (", ".join(beaten) if beaten else "none") + ".")
    return out


def bench_sentences(directory: Path) -> list[str]:
    fmt, vs = directory / "format.csv", directory / "vs_clean.csv"
    if not fmt.is_file():
        return []
    formats = {(r["model"], r["task"]): r for r in read_csv(fmt)}
    out = []
    for r in read_csv(vs) if vs.is_file() else []:
        this, ref = formats.get((r["model"], r["task"])), formats.get((r["paired_with"], r["task"]))
        if this is None or ref is None:
            continue
        p = _f(r["mcnemar_p"])
        out.append(f"**{r['task']}**, {r['model']} vs {r['paired_with']} (n = {this['n']}, limit {this['limit']}): opens the "
                   f"thinking {_f(this['opens_thinking']):.0f}% [{_f(this['opens_thinking_low']):.0f}, "
                   f"{_f(this['opens_thinking_high']):.0f}] vs {_f(ref['opens_thinking']):.0f}%; accuracy "
                   f"{_f(this['accuracy']):.0f}% [{_f(this['accuracy_low']):.0f}, {_f(this['accuracy_high']):.0f}] vs "
                   f"{_f(ref['accuracy']):.0f}% (performance {_f(r['performance']):.1f}% vs {_f(r['performance_reference']):.1f}%, "
                   f"McNemar p = {p:.3g}: {'significant' if p < 0.05 else '**not significant**'}).")
    return out


def write_section(directory: Path, cfg, rows: list[dict[str, Any]], adl_rows: list[dict[str, Any]],
                  best: dict[str, Any] | None, *, hook: str = "") -> Path:
    out = ["## Causal tests (intervene)\n",
           "At the crosscoder's hook: `patch_set` gives the base model the tuned model's contribution of a latent set "
           "(latents from the paired activations), `ablate_set` removes the set's contribution from the tuned model, "
           "`steer` adds a direction; each selection is read against frequency-matched random sets of the same size. "
           "Brackets: 95% bootstrap intervals over contexts (docs/intervene.md).\n"]
    text = "reasoning" if any(r["text"] == "reasoning" for r in rows) else "general"
    sentences = headline(rows, best, scan=scan_closed(cfg.stage_dir("scan"), hook, text))
    adl_texts = list(dict.fromkeys(r["text"] for r in adl_rows))
    for text in adl_texts:
        first = next(r for r in adl_rows if r["text"] == text)
        where = (f"first {cfg.intervene.adl_positions} positions of the assistant turn"
                 if first.get("window") == "assistant" else f"first {cfg.intervene.adl_positions} positions")
        if int(first.get("n_skipped") or 0):
            where += f"; {first['n_skipped']} conversations skipped, their assistant turn starts too late"
        for model in ("base", "tuned"):
            tokens = top_tokens(adl_rows, text=text, model=model)
            if tokens:
                sentences.append(f"ADL ({text} text, {where}) through the {model} "
                                 "model's logit lens promotes: " + ", ".join(f"`{t.strip() or repr(t)}`" for t in tokens) + ".")
    sentences += bench_sentences(directory / "bench_intervened")
    if sentences:
        out.append("\n".join(f"- {s}" for s in sentences) + "\n")
    steering = steering_table(rows)
    if steering:
        out.append("Steering the base model along each direction, against random directions added with the same α "
                   "and typical norm (beats random: the 95% interval's low end above every random direction):\n\n"
                   + steering + "\n")
    for name, caption in (("kl_closed.png", "Fraction of KL(base ‖ tuned) closed by patching latent sets (top) and the "
                                            "tuned model's shift under ablation (bottom), against frequency-matched random sets."),
                          ("steering.png", "Steering the base model along each direction: KL closed and ΔCE against α, "
                                             "each with the band of its random directions of the same norm."),
                          ("bench_intervened/accuracy_vs_limit.png", "Accuracy against the token limit of the base, tuned "
                                                                     "and intervened models (Wilson 95% intervals).")):
        if (directory / name).is_file():
            pdf = Path(name).with_suffix(".pdf")
            link = f" [PDF]({pdf.as_posix()})" if (directory / pdf).is_file() else ""
            out.append(f"![{caption}]({name})\n\n*{caption}*{link}\n")
    out.append("Tables: [intervene.csv](intervene.csv) (every intervention × measure with intervals), "
               "[adl_tokens.csv](adl_tokens.csv)"
               + (", [bench_intervened/summary.md](bench_intervened/summary.md), [format.csv](bench_intervened/format.csv), "
                  "[vs_clean.csv](bench_intervened/vs_clean.csv)" if (directory / "bench_intervened").is_dir() else "")
               + ".\n")
    path = directory / "report_section.md"
    artifacts.write_text(path, "\n".join(out))
    return path
