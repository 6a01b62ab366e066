"""`report.md`, `report_appendix.md` and `report.html`: the paper's tables and figures gathered
from whatever the stages have produced.

The report reads only files (never in-memory results), so it can be rebuilt at any time from the
stage directories (`python -m reasondiff.analyze.report outputs/<exp>`), and a missing stage shows
up as a line saying what to run rather than an error.

report.md opens with a headline summary written from the numbers (headline.py), then: fine-tuning
loss (Fig. 2), benchmarks (Table 1 with intervals and the paired test, per-limit accuracy with
"no answer" counts, Fig. 3 then Fig. 4), the layer scan, the crosscoder (the settings that matter
for its variant, scaling factors, train's held-out evaluation, training curves), its reconstruction
(Table 2 under both conventions, with KL and 95% intervals, on general and reasoning text),
decoder geometry (Figs. 5-6, ‖d_base‖ vs ‖d_tuned‖, class counts by r and by Δ) and model-specific
latents (frequencies, Latent Scaling, the most notable latents), then the sections of the stages
that run after analyze (intervene's causal tests, included from its report_section.md). Each stage's
configuration is in report_appendix.md. report.html is report.md and its appendix as one self-contained page
(report_html.py).
"""

from __future__ import annotations

import csv
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from reasondiff.analyze.ce_recovery import METRICS
from reasondiff.analyze.headline import headline_sentences, interval, num, top_tokens
from reasondiff.analyze.latent_page import format_fact
from reasondiff.core import artifacts, figures

STAGE_ORDER = ("finetune", "bench", "harvest", "scan", "train", "analyze", "intervene")


def _format(value: Any, fmt: str | None) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in ".eEn") else int(value)
        except ValueError:
            return value.replace("|", "\\|")
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if fmt == "d":
            return str(int(value))
        return format(value, fmt or ".4g")
    if isinstance(value, int):
        return format(value, fmt) if fmt and fmt != "d" and not fmt.endswith("%") else str(value)
    return str(value).replace("|", "\\|")


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None,
                   floatfmt: Mapping[str, str] | None = None, headers: Mapping[str, str] | None = None,
                   preformatted: bool = False) -> str:
    """A GitHub-flavoured markdown table (no tabulate dependency); floats as .4g unless told;
    `headers` renames columns (to carry their units); `preformatted` cells are shown as given
    (only `|` escaped), e.g. "1.0000" stays "1.0000"."""
    if not rows:
        return "_(no rows)_\n"
    columns = list(columns or rows[0].keys())
    floatfmt = floatfmt or {}
    headers = headers or {}
    lines = ["| " + " | ".join(headers.get(c, c) for c in columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        cells = (str(row.get(c, "")).replace("|", "\\|") if preformatted else _format(row.get(c), floatfmt.get(c))
                 for c in columns)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    """Atomic CSV (floats at full precision). Text is always quoted: a token such as "\r" is not
    quoted by the minimal rule under a "\n" line terminator, and a reader then splits its row."""
    with artifacts.atomic_write(path, "w") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n",
                                quoting=csv.QUOTE_NONNUMERIC)
        writer.writeheader()
        writer.writerows(rows)


CE_MARKDOWN_COLUMNS = ("text", "text_source", "convention", "model", "ce_recovered", "ce_clean", "ce_zero_ablation", "ce_spliced",
                       "delta_ce", "kl_spliced", "kl_zero_ablation", "n_tokens")
CE_HEADERS = {"ce_recovered": "CE recovered [95% CI]", "ce_clean": "CE clean (nats)",
              "ce_zero_ablation": "CE zero-ablated (nats)", "ce_spliced": "CE spliced (nats)", "delta_ce": "ΔCE (nats)",
              "kl_spliced": "KL spliced (nats)", "kl_zero_ablation": "KL zero-ablated (nats)", "n_tokens": "predictions",
              "text_source": "text is"}


def format_ce_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """ce_recovery.csv rows with every metric as `value [low, high]` (the 95% bootstrap interval;
    CE recovered as a percentage, the rest in nats)."""

    def fmt(value, spec: str) -> str:
        value = math.nan if value in ("", None) else float(value)
        return "nan" if value != value else format(value, spec)

    out = []
    for row in rows:
        shown = {k: str(row.get(k, "")) for k in ("text", "text_source", "convention", "model")}
        for key in METRICS:
            if key not in row:
                continue
            spec = ".1%" if key == "ce_recovered" else ".4f"
            low, high = fmt(row.get(f"{key}_ci_low"), spec), fmt(row.get(f"{key}_ci_high"), spec)
            shown[key] = fmt(row[key], spec) + ("" if low == "nan" else f" [{low}, {high}]")
        shown["n_tokens"] = str(row.get("n_tokens", ""))
        out.append(shown)
    return out


def ce_table_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """Table 2: CE recovered with its 95% interval, the three losses, ΔCE and the two KLs (nats)."""
    columns = [c for c in CE_MARKDOWN_COLUMNS if not rows or c in ("text", "convention")
               or (c in rows[0] and (c != "text_source" or any(r.get(c) for r in rows)))]
    return markdown_table(format_ce_rows(rows), columns, floatfmt={k: ".4f" for k in METRICS} | {"n_tokens": "d"},
                          headers=CE_HEADERS)


def _rel(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path, start)).as_posix()


def _figure(path: Path, start: Path, caption: str) -> str:
    """A figure (PNG inline) with its caption, and a link to its vector PDF when there is one."""
    pdf = Path(path).with_suffix(".pdf")
    vector = f" [PDF]({_rel(pdf, start)})" if pdf.is_file() else ""
    return f"![{caption}]({_rel(path, start)})\n\n*{caption}*{vector}\n"


def _missing(what: str, command: str) -> str:
    return f"> _Not available yet: {what}. Run `{command}`._\n"


def _csv_section(path: Path, start: Path, *, columns: Sequence[str] | None = None,
                 floatfmt: Mapping[str, str] | None = None, headers: Mapping[str, str] | None = None,
                 max_rows: int = 60) -> str:
    rows = read_csv_rows(path)
    note = f"\n_(first {max_rows} of {len(rows)} rows; full table: [{path.name}]({_rel(path, start)}))_\n" \
        if len(rows) > max_rows else f"\nSource: [{path.name}]({_rel(path, start)})\n"
    return markdown_table(rows[:max_rows], columns, floatfmt, headers) + note


def _stage_config_section(stage: str, stage_dir: Path, start: Path, running: str = "analyze") -> str:
    config_path = stage_dir / ".hydra" / "config.yaml"
    manifest_path = stage_dir / artifacts.MANIFEST
    status = "complete" if artifacts.is_complete(stage_dir) else ("incomplete" if stage_dir.exists() else "not run")
    if stage == running and not artifacts.is_complete(stage_dir):
        status = "this run"
    line = f"- **{stage}** ({status})"
    if manifest_path.is_file():
        manifest = artifacts.read_json(manifest_path)
        line += (f": {manifest.get('wall_seconds', '?')} s, finished {manifest.get('finished_at', '?')}, "
                 f"commit `{(manifest.get('git_commit') or 'unknown')[:10]}`"
                 f"{' (uncommitted changes, diff sha256 `' + str(manifest.get('git_diff_sha256'))[:12] + '`)' if manifest.get('git_dirty') else ''}, "
                 f"[manifest]({_rel(manifest_path, start)})")
    if not config_path.is_file():
        return line + "\n"
    line += f", [config]({_rel(config_path, start)})\n"
    from omegaconf import OmegaConf

    node = OmegaConf.load(config_path)
    picked = {key: node[key] for key in ("model", "tuned_model", stage) if key in node}
    body = OmegaConf.to_yaml(OmegaConf.create(picked)).rstrip()
    return line + f"\n<details markdown='1'><summary>{stage} config</summary>\n\n```yaml\n{body}\n```\n\n</details>\n"


CROSSCODER_KEYS = {"common": ("d_model", "n_latents", "hook", "tokens", "steps"), "l1": ("l1_coeff",),
                   "batchtopk": ("k", "aux_k")}
"""What the report says about a crosscoder, by variant: k means nothing for an L1 crosscoder, l1_coeff
nothing for BatchTopK."""


def crosscoder_facts(config: Mapping[str, Any]) -> dict[str, Any]:
    """The crosscoder's settings that matter for its variant (config.json of the train stage)."""
    train = config.get("train", {}) if isinstance(config.get("train"), Mapping) else {}
    variant = config.get("variant") or train.get("variant")
    facts: dict[str, Any] = {"variant": variant} if variant else {}
    for key in (*CROSSCODER_KEYS["common"], *CROSSCODER_KEYS.get(str(variant), ())):
        value = config.get(key, train.get(key))
        if value is not None:
            facts[key] = value
    if config.get("n_designated_shared") or train.get("n_designated_shared"):
        facts["n_designated_shared"] = config.get("n_designated_shared") or train.get("n_designated_shared")
    return facts


def _crosscoder_line(crosscoder_dir: Path) -> str:
    config_path = crosscoder_dir / "config.json"
    if not config_path.is_file():
        return f"Crosscoder: `{crosscoder_dir}` (no config.json found).\n"
    facts = ", ".join(f"{k} = {v}" for k, v in crosscoder_facts(artifacts.read_json(config_path)).items())
    return f"Crosscoder: `{crosscoder_dir}` ({facts}).\n"


def _scan_section(scan_dir: Path, start: Path, args: str) -> str:
    """The layer scan's figure and recommendation (stage scan, docs/scan.md)."""
    head = "## Layer scan: where the fine-tune acts\n"
    figure, recommendation = scan_dir / "scan.png", scan_dir / "recommendation.json"
    if not (figure.is_file() and recommendation.is_file()):
        return head + _missing("the layer scan", f"python -m reasondiff.scan {args}")
    found = artifacts.read_json(recommendation)
    follow_up = "".join(f"{command}\n" for command in found.get("follow_up", []))
    return (head + f"{found['line']}\n\n" + scan_texts_line(scan_dir)
            + (f"```bash\n{follow_up}```\n\n" if follow_up else "")
            + _figure(figure, start, "Layer scan: fraction of KL(base ‖ tuned) closed by patching each residual "
                                     "layer, and representation change per layer")
            + f"\nPer-layer numbers: [scan.csv]({_rel(scan_dir / 'scan.csv', start)}).\n")


def scan_texts_line(scan_dir: Path) -> str:
    """Which texts the scan read (its manifest): a reasoning text of trained rows is named as such."""
    manifest = scan_dir / artifacts.MANIFEST
    texts = (artifacts.read_json(manifest).get("outputs") or {}).get("texts") if manifest.is_file() else None
    if not texts:
        return ""
    parts = [f"{name}: {t.get('label', 'not recorded (made before held-out reasoning text: trained rows)')}, "
             f"{t.get('contexts', '?')} contexts, {t.get('tokens', '?')} tokens" for name, t in texts.items()]
    return "Texts scanned — " + "; ".join(parts) + ".\n\n"


# --- benchmarks ------------------------------------------------------------------------------------

def _cell(value: Any, fmt: str) -> str:
    v = num(value)
    return "–" if math.isnan(v) else format(v, fmt)


def _with_interval(value: Any, low: Any, high: Any, fmt: str) -> str:
    return _cell(value, fmt) + interval(low, high, fmt)


def table1_rows(summary: Sequence[Mapping[str, str]], results: Sequence[Mapping[str, str]]) -> list[dict[str, str]]:
    """Table 1 as shown: performance and scaling with their intervals, the best limit and how many
    answers were missing there, the paired comparison with the reference model; then s1's Scaling,
    the most common answer with its share (flagged past half) and the majority-class baseline
    (columns of summary.csv since issue 26; "–" for an older file)."""
    no_answer = {(r["model"], r["task"], str(r["limit"])): (r.get("no_answer", ""), r.get("n", "")) for r in results}
    rows = []
    for s in summary:
        missing, n = no_answer.get((s["model"], s["task"], str(s["best_limit"])), ("", ""))
        p = num(s.get("mcnemar_p"))
        rows.append({
            "model": s["model"], "task": s["task"], "n": s.get("n", ""),
            "performance (%)": _with_interval(s["performance"], s.get("performance_low"), s.get("performance_high"), ".1f"),
            "best limit (tokens)": s["best_limit"],
            "no answer at best limit": f"{missing}/{n}" if missing != "" else "–",
            "scaling (%/token)": _with_interval(s.get("scaling"), s.get("scaling_low"), s.get("scaling_high"), ".4f"),
            "Δ vs base (points)": "" if math.isnan(num(s.get("performance_diff"))) else f"{num(s['performance_diff']):+.1f}",
            "McNemar p": "" if math.isnan(p) else f"{p:.3g}",
            "s1 scaling (%/token)": _with_interval(s.get("s1_scaling"), s.get("s1_scaling_low"), s.get("s1_scaling_high"),
                                                   ".4f"),
            "top answer (share %)": (f"`{s['top_answer']}` ({_cell(s.get('top_answer_share'), '.0f')})"
                                     + (" ⚑" if str(s.get("constant_answerer")) == "True" else "")
                                     if s.get("top_answer") else "–"),
            "majority baseline (%)": _cell(s.get("majority_baseline"), ".1f"),
        })
    return rows


def per_limit_rows(results: Sequence[Mapping[str, str]]) -> list[dict[str, str]]:
    """results.csv as shown: accuracy with its Wilson interval, missing answers, finished turns, time, tokens."""
    rows = []
    for r in results:
        n = r.get("n", "")
        rows.append({
            "model": r["model"], "task": r["task"], "limit (tokens)": r["limit"],
            "accuracy (%) [Wilson 95%]": _with_interval(r["accuracy"], r.get("accuracy_low"), r.get("accuracy_high"), ".1f"),
            "no answer": f"{r['no_answer']}/{n}" if r.get("no_answer", "") != "" else "–",
            "finished": f"{r['finished']}/{n}" if r.get("finished", "") != "" else "–",
            "s / question (wall)": _cell(r.get("seconds_per_question"), ".3f"),
            "tokens / question": _cell(r.get("mean_tokens"), ".1f"),
        })
    return rows


def _bench_section(bench: Path, start: Path, args: str) -> str:
    out = ["## Token-budget benchmarks (Table 1, Figs. 3-4)\n"]
    summary, results = bench / "summary.csv", bench / "results.csv"
    if not summary.is_file():
        return out[0] + _missing("the benchmark summary", f"python -m reasondiff.bench {args}")
    result_rows = read_csv_rows(results) if results.is_file() else []
    out.append("**Table 1.** Performance = best accuracy over the token limits; scaling = least-squares slope of "
               "accuracy against the limit (comparable only on the same limit grid); brackets: 95% bootstrap "
               "intervals over questions. Δ vs base and McNemar's exact p compare each model with base on the same "
               "questions, each at its own best limit. \"No answer\" counts replies with no extractable answer "
               "(wrong, but apart from wrong answers). s1 scaling = s1's mean slope over pairs of runs against the "
               "tokens each spent. Top answer: the answer given most often at the best limit and its share of the "
               "questions (⚑: more than half, so read the performance against the majority-class baseline, the "
               "accuracy of always giving the most common gold answer, not against chance).\n\n")
    out.append(markdown_table(table1_rows(read_csv_rows(summary), result_rows), preformatted=True)
               + f"\nSource: [{summary.name}]({_rel(summary, start)}); in words: "
               f"[summary.md]({_rel(bench / 'summary.md', start)}).\n")
    if result_rows:
        out.append("\n**Per token limit.** Accuracy with its Wilson 95% interval; \"finished\" = replies that ended "
                   "their turn within the limit; time is wall-clock seconds per question (see Fig. 3).\n\n")
        out.append(markdown_table(per_limit_rows(result_rows), preformatted=True) + f"\nSource: [{results.name}]({_rel(results, start)})\n")
    for stem in ("time_vs_limit", "accuracy_vs_limit"):  # Fig. 3 before Fig. 4
        png = bench / f"{stem}.png"
        if png.is_file():
            out.append(_figure(png, start, figures.caption(stem)))
    return "\n".join(out)


def _code(tokens: Sequence[str]) -> str:
    return " ".join(f"`{repr(t)[1:-1]}`" for t in tokens)


def _notable_table(analyze_dir: Path, n: int = 5) -> str:
    """The most tuned-leaning and most base-leaning live latents with their frequencies and the tokens
    their decoder direction promotes in their own model (the one whose decoder norm is larger)."""
    latents_csv = analyze_dir / "latents.csv"
    if not latents_csv.is_file():
        return ""
    rows = [r for r in read_csv_rows(latents_csv) if r["class"] not in ("dead", "designated_shared")
            and not math.isnan(num(r["relative_norm"]))]
    logits = read_csv_rows(analyze_dir / "latent_logits.csv") if (analyze_dir / "latent_logits.csv").is_file() else []
    picked = sorted(rows, key=lambda r: -num(r["relative_norm"]))[:n] + sorted(rows, key=lambda r: num(r["relative_norm"]))[:n]
    shown = []
    for r in picked:
        latent = int(num(r["latent"]))
        own = "tuned" if num(r["relative_norm"]) >= 0.5 else "base"
        shown.append({"latent": f"[{latent}](latents.html#latent-{latent})", "class": r["class"],
                      "r": format_fact("relative_norm", r["relative_norm"]),
                      "Δ": format_fact("delta_norm", r.get("delta_norm")),
                      "cosine": _cell(r["cosine"], ".3f"),
                      "freq general (%)": _cell(100 * num(r["freq_general"]), ".3f"),
                      "freq reasoning (%)": _cell(100 * num(r.get("freq_reasoning")), ".3f"),
                      "ν_error": _cell(r.get("nu_error"), ".3g"),
                      "top promoted tokens (own model)": f"{own}: {_code(top_tokens(logits, latent, own))}"
                      if top_tokens(logits, latent, own) else "–"})
    return ("\n**Most tuned-leaning and most base-leaning live latents** (highest and lowest r; tokens: direct "
            "logit effect of the decoder direction in the model whose decoder norm is larger, latent_logits.csv):\n\n"
            + markdown_table(shown, preformatted=True))


# --- the report ------------------------------------------------------------------------------------

APPENDIX = "report_appendix.md"


def build_report(exp_dir: Path, analyze_dir: Path, *, title: str, crosscoder_dir: Path | None = None,
                 thresholds: Mapping[str, float] | None = None, command_args: str | None = None,
                 given_tuned_model: str | None = None) -> str:
    """The report's markdown; every path in it is relative to `analyze_dir` (where it is written).
    `command_args`: the overrides the run was made with, carried by the commands the report prints
    (default `+exp=<experiment dir's name>`); `given_tuned_model`: tuned_model when the experiment
    fine-tuned nothing itself (a pair diffed as given)."""
    exp_dir, analyze_dir = Path(exp_dir), Path(analyze_dir)
    exp = exp_dir.name
    args = command_args or f"+exp={exp}"
    out = [f"# {title}\n"]
    calibration = analyze_dir / "calibration.md"  # against the nulls and across seeds: first (docs/null.md)
    if calibration.is_file():
        out.append(calibration.read_text())
    sentences = headline_sentences(exp_dir, analyze_dir, thresholds=thresholds)
    if sentences:
        out.append("## Summary\n\n" + "\n".join(f"- {sentence}" for sentence in sentences) + "\n")
    out.append(f"Experiment `{exp}`. Every table below is a CSV next to this file or in its stage directory; each "
               f"stage's configuration is in the [appendix]({APPENDIX}); the same report as one self-contained page: "
               "[report.html](report.html); the latents: [latents.html](latents.html).\n")
    if crosscoder_dir is not None:
        out.append(_crosscoder_line(Path(crosscoder_dir)))

    out.append("## Fine-tuning (Fig. 2)\n")
    loss_curve = exp_dir / "finetune" / "loss_curve.png"
    if given_tuned_model and not loss_curve.is_file():
        out.append(f"No fine-tune in this experiment: the tuned model was given (`tuned_model={given_tuned_model}`).\n")
    else:
        out.append(_figure(loss_curve, analyze_dir, figures.caption("loss_curve")) if loss_curve.is_file()
                   else _missing("the fine-tuning loss curve", f"python -m reasondiff.finetune {args}"))

    out.append(_bench_section(exp_dir / "bench", analyze_dir, args))
    out.append(_scan_section(exp_dir / "scan", analyze_dir, args))

    out.append("## The crosscoder\n")
    factors = analyze_dir / "scaling_factors.csv"
    if factors.is_file():
        rows = read_csv_rows(factors)
        ratio = float(rows[1]["relative_to_base"]) if len(rows) > 1 else math.nan
        out.append("Per-model norm scaling factors (raw activation × factor = the crosscoder's input; harvest "
                   f"makes each model's mean norm √d_model). Ratio tuned / base = **{ratio:.4g}**.\n\n")
        out.append(_csv_section(factors, analyze_dir, floatfmt={"scaling_factor": ".5g", "relative_to_base": ".4g"},
                                headers={"mean_norm": "mean raw norm"}))
    train_dir = Path(crosscoder_dir) if crosscoder_dir is not None else exp_dir / "train"
    if (train_dir / "summary.json").is_file():
        summary = artifacts.read_json(train_dir / "summary.json")
        keys = ("l0", "fvu", "explained_variance_base", "explained_variance_tuned", "frac_dead", "eval_tokens")
        out.append(f"\ntrain's final evaluation ({summary.get('eval_source', 'on training data')}):\n\n"
                   + markdown_table([{k: summary.get(k) for k in keys}], keys, floatfmt={"eval_tokens": "d"},
                                    headers={"l0": "L0 (latents/token)", "fvu": "FVU", "frac_dead": "dead fraction",
                                             "eval_tokens": "tokens", "explained_variance_base": "EV base",
                                             "explained_variance_tuned": "EV tuned"}))
    curves = analyze_dir / "training_curves.png"
    if curves.is_file():
        out.append(_figure(curves, analyze_dir, figures.caption("training_curves")))

    out.append("\n## Crosscoder reconstruction: CE-loss recovery (Table 2)\n")
    ce = analyze_dir / "ce_recovery.csv"
    if ce.is_file():
        out.append("CE recovered = (L_zero − L_spliced) / (L_zero − L_clean); each model's reconstruction comes from "
                   "the joint code of both models, scaling factors undone. Convention `paper` is Kissane & Nanda's "
                   "code behind the paper's Table 2 (splice positions 1:, zero-ablate every position, every "
                   "prediction scored); `sink_preserving` touches and scores only the positions the crosscoder "
                   "stands in for (docs/analyze.md). ΔCE = L_spliced − L_clean and KL(clean ‖ ·) are in nats per "
                   "prediction; brackets: 95% bootstrap intervals over contexts. `general` = held-out text, "
                   "`reasoning` = conversations in the fine-tune's chat layout; `text is` says which: the "
                   "fine-tune's held-out rows, the tuned model's own bench generations (on-policy), a file, "
                   "or trained rows (asked for explicitly: memorised text).\n\n")
        out.append(ce_table_markdown(read_csv_rows(ce)) + f"\nSource: [{ce.name}]({_rel(ce, analyze_dir)})\n")
    else:
        out.append(_missing("CE recovery", f"python -m reasondiff.analyze {args}"))
    fit = analyze_dir / "reconstruction.csv"
    if fit.is_file():
        out.append("\nOn the same held-out tokens: explained variance of each model's activations (in the "
                   "crosscoder's normalised space; `both` = 1 − FVU) and L0, active latents per token.\n\n")
        out.append(_csv_section(fit, analyze_dir, floatfmt={"explained_variance": ".3f", "l0": ".1f", "n_tokens": "d"},
                                headers={"explained_variance": "explained variance", "l0": "L0 (latents/token)",
                                         "n_tokens": "tokens"}))

    out.append("\n## Decoder geometry (Figs. 5-6)\n")
    counts = analyze_dir / "class_counts.csv"
    if counts.is_file():
        out.append("Latents per class by the relative decoder norm r = ‖d_tuned‖ / (‖d_base‖ + ‖d_tuned‖) (the paper's "
                   "bands) and, in the Δ columns, by Minder et al.'s Δ = ½((‖d_tuned‖ − ‖d_base‖) / "
                   "max(‖d_base‖, ‖d_tuned‖) + 1) with their bins (Δ < 0.1, |Δ − ½| < 0.1, Δ > 0.9): a different "
                   "function of the norms, so the counts differ.\n\n")
        out.append(_csv_section(counts, analyze_dir, floatfmt={"fraction": ".1%", "fraction_delta": ".1%"},
                                headers={"n_latents": "latents (by r)", "fraction": "share (by r)",
                                         "n_latents_delta": "latents (by Δ)", "fraction_delta": "share (by Δ)"}))
    else:
        out.append(_missing("latent classes", f"python -m reasondiff.analyze {args}"))
    for stem in ("relative_norm_hist", "cosine_hist", "decoder_norms", "frequency_hist"):
        if (analyze_dir / f"{stem}.png").is_file():
            out.append(_figure(analyze_dir / f"{stem}.png", analyze_dir, figures.caption(stem)))

    out.append("## Model-specific latents\n")
    freq = analyze_dir / "class_frequency.csv"
    if freq.is_file():
        out.append("Activation frequency per latent class on general vs reasoning text "
                   "(mean over the class's live latents, as a fraction of tokens; ratio > 1: fires more on reasoning).\n\n")
        out.append(_csv_section(freq, analyze_dir, floatfmt={"mean_freq_general": ".4f", "mean_freq_reasoning": ".4f",
                                                            "reasoning_over_general": ".3g",
                                                            "frac_latents_more_on_reasoning": ".1%"},
                                headers={"n_latents": "latents", "reasoning_over_general": "reasoning / general",
                                         "mean_freq_general": "mean freq general", "mean_freq_reasoning":
                                         "mean freq reasoning",
                                         "frac_latents_more_on_reasoning": "share firing more on reasoning"}))
    scaling = analyze_dir / "latent_scaling_summary.csv"
    if scaling.is_file():
        out.append("\nLatent Scaling (Minder et al. 2025): ν = β(other model) / β(own model); "
                   "near 0 = truly model-specific, near 1 = the other model needs the direction too.\n\n")
        out.append(_csv_section(scaling, analyze_dir, floatfmt={"median_nu_error": ".3f", "median_nu_reconstruction": ".3f"},
                                headers={"n_live_latents": "live latents", "n_with_beta": "with β",
                                         "median_nu_error": "median ν_error",
                                         "median_nu_reconstruction": "median ν_reconstruction",
                                         "n_truly_specific": "truly specific", "specific_ratio_max": "ν_error ≤"}))
        if (analyze_dir / "latent_scaling.png").is_file():
            out.append(_figure(analyze_dir / "latent_scaling.png", analyze_dir, figures.caption("latent_scaling")))
    out.append(_notable_table(analyze_dir))
    for name, what in (("latents.html", "per-latent pages: decoder-norm facts, activation histogram, logit effects, "
                                        "top contexts with per-token values"),
                       ("latents.csv", "every latent: class by r and by Δ, relative norm r, Δ, cosine, frequencies, β, ν"),
                       ("latent_logits.csv", "top promoted / suppressed tokens of the shown latents, per model")):
        if (analyze_dir / name).is_file():
            out.append(f"- [{name}]({name}): {what}\n")
    out.append(later_stage_sections(analyze_dir))
    return "\n".join(part.rstrip("\n") + "\n" for part in out if part)


LATER_STAGES = ("intervene",)
"""Stages that run after analyze and contribute a section to its report: `<stage>/report_section.md`,
written by the stage with links relative to its own directory, included here with the links rewritten."""
_LINK = re.compile(r"(\]\()(?!https?:|#|/|data:)([^)\s]+)(\))")


def later_stage_sections(analyze_dir: Path) -> str:
    """The sections of the stages after analyze that have written one (intervene's causal tests)."""
    parts = []
    for stage in LATER_STAGES:
        # a named run's sibling: analyze@x reads intervene@x
        stage_dir = analyze_dir.parent / analyze_dir.name.replace("analyze", stage, 1)
        section = stage_dir / "report_section.md"
        if section.is_file():
            prefix = _rel(stage_dir, analyze_dir)
            parts.append(_LINK.sub(lambda m, p=prefix: f"{m.group(1)}{p}/{m.group(2)}{m.group(3)}", section.read_text()))
    return "\n".join(parts)


def build_appendix(exp_dir: Path, analyze_dir: Path, *, title: str, running: str = "analyze") -> str:
    """report_appendix.md: how each stage ran (status, wall time, commit) and its configuration."""
    out = [f"# {title}: appendix\n", "How each stage ran, and the configuration it ran with (its own section plus "
           "the models).\n\n"]
    for stage in STAGE_ORDER:
        out.append(_stage_config_section(stage, Path(exp_dir) / stage, Path(analyze_dir), running))
    return "\n".join(part.rstrip("\n") + "\n" for part in out)


def write_reports(exp_dir: Path, analyze_dir: Path, *, title: str, crosscoder_dir: Path | None = None,
                  thresholds: Mapping[str, float] | None = None, command_args: str | None = None,
                  given_tuned_model: str | None = None, running: str = "analyze") -> dict[str, Path]:
    """Write report.md, report_appendix.md and report.html into analyze_dir (see `build_report`)."""
    from reasondiff.analyze.report_html import render_report_html

    analyze_dir = Path(analyze_dir)
    report = build_report(exp_dir, analyze_dir, title=title, crosscoder_dir=crosscoder_dir, thresholds=thresholds,
                          command_args=command_args, given_tuned_model=given_tuned_model)
    appendix = build_appendix(exp_dir, analyze_dir, title=title, running=running)
    paths = {"report": analyze_dir / "report.md", "appendix": analyze_dir / APPENDIX, "html": analyze_dir / "report.html"}
    artifacts.write_text(paths["report"], report)
    artifacts.write_text(paths["appendix"], appendix)
    artifacts.write_text(paths["html"], render_report_html(report, appendix, analyze_dir, title=title))
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m reasondiff.analyze.report outputs/<exp>`: rebuild the report from the files alone."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m reasondiff.analyze.report", description=main.__doc__)
    parser.add_argument("exp_dir", type=Path, help="the experiment's output directory, e.g. outputs/tiny")
    parser.add_argument("--analyze-dir", type=Path, default=None, help="default: EXP_DIR/analyze")
    args = parser.parse_args(argv)
    analyze_dir = args.analyze_dir or args.exp_dir / "analyze"
    if not analyze_dir.is_dir():
        raise SystemExit(f"{analyze_dir}: no analyze directory (run python -m reasondiff.analyze first)")
    paths = rebuild_report(args.exp_dir, analyze_dir)
    print("\n".join(str(p) for p in paths.values()))
    return 0


def rebuild_report(exp_dir: Path, analyze_dir: Path, *, running: str = "", **report_args: Any) -> dict[str, Path]:
    """report.md / report_appendix.md / report.html rebuilt from the files alone (a later stage calls this
    once its own section is written, naming itself as `running`: the appendix calls it "this run")."""
    config = Path(analyze_dir) / "manifest.json"
    crosscoder = artifacts.read_json(config).get("inputs", {}).get("crosscoder_dir") if config.is_file() else None
    return write_reports(exp_dir, analyze_dir, title=f"reasondiff report: {Path(exp_dir).name}",
                         crosscoder_dir=Path(crosscoder) if crosscoder else None, running=running, **report_args)


if __name__ == "__main__":
    raise SystemExit(main())
