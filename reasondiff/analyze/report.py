"""`report.md`: the paper's tables and figures gathered from whatever the stages have produced.

The report reads only files (never in-memory results), so it can be rebuilt at any time from the
stage directories, and a missing stage shows up as a line saying what to run rather than an error.
Sections: fine-tuning loss (Fig. 2), benchmarks (Table 1, Figs. 3-4), the layer scan, the crosscoder (scaling
factors, training curves), its reconstruction (Table 2 under both conventions, with KL and 95%
intervals, on general and reasoning text), decoder geometry (Figs. 5-6, ‖d_base‖ vs ‖d_tuned‖, class
counts by r and by Δ), model-specific latents (frequencies, Latent Scaling), and the configuration
each stage ran with.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from reasondiff import artifacts
from reasondiff.analyze.ce_recovery import METRICS

STAGE_ORDER = ("finetune", "bench", "harvest", "scan", "train", "analyze")


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
                   floatfmt: Mapping[str, str] | None = None) -> str:
    """A GitHub-flavoured markdown table (no tabulate dependency); floats as .4g unless told."""
    if not rows:
        return "_(no rows)_\n"
    columns = list(columns or rows[0].keys())
    floatfmt = floatfmt or {}
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_format(row.get(c), floatfmt.get(c)) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    """Atomic CSV (floats at full precision)."""
    with artifacts.atomic_write(path, "w") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


CE_MARKDOWN_COLUMNS = ("text", "convention", "model", "ce_recovered", "ce_clean", "ce_zero_ablation", "ce_spliced",
                       "delta_ce", "kl_spliced", "kl_zero_ablation", "n_tokens")


def format_ce_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """ce_recovery.csv rows with every metric as `value [low, high]` (the 95% bootstrap interval;
    CE recovered as a percentage, the rest in nats)."""

    def fmt(value, spec: str) -> str:
        value = math.nan if value in ("", None) else float(value)
        return "nan" if value != value else format(value, spec)

    out = []
    for row in rows:
        shown = {k: str(row.get(k, "")) for k in ("text", "convention", "model")}
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
    columns = [c for c in CE_MARKDOWN_COLUMNS if not rows or c in rows[0] or c in ("text", "convention")]
    return markdown_table(format_ce_rows(rows), columns, floatfmt={k: ".4f" for k in METRICS} | {"n_tokens": "d"})


def _rel(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path, start)).as_posix()


def _figure(path: Path, start: Path, caption: str) -> str:
    return f"![{caption}]({_rel(path, start)})\n\n*{caption}*\n"


def _missing(what: str, command: str) -> str:
    return f"> _Not available yet: {what}. Run `{command}`._\n"


def _csv_section(path: Path, start: Path, *, columns: Sequence[str] | None = None,
                 floatfmt: Mapping[str, str] | None = None, max_rows: int = 60) -> str:
    rows = read_csv_rows(path)
    note = f"\n_(first {max_rows} of {len(rows)} rows; full table: [{path.name}]({_rel(path, start)}))_\n" \
        if len(rows) > max_rows else f"\nSource: [{path.name}]({_rel(path, start)})\n"
    return markdown_table(rows[:max_rows], columns, floatfmt) + note


def _stage_config_section(stage: str, stage_dir: Path, start: Path) -> str:
    config_path = stage_dir / ".hydra" / "config.yaml"
    manifest_path = stage_dir / artifacts.MANIFEST
    status = "complete" if artifacts.is_complete(stage_dir) else ("incomplete" if stage_dir.exists() else "not run")
    if stage == "analyze" and not artifacts.is_complete(stage_dir):
        status = "this run"
    line = f"- **{stage}** ({status})"
    if manifest_path.is_file():
        manifest = artifacts.read_json(manifest_path)
        line += (f": {manifest.get('wall_seconds', '?')} s, finished {manifest.get('finished_at', '?')}, "
                 f"commit `{(manifest.get('git_commit') or 'unknown')[:10]}`, "
                 f"[manifest]({_rel(manifest_path, start)})")
    if not config_path.is_file():
        return line + "\n"
    line += f", [config]({_rel(config_path, start)})\n"
    from omegaconf import OmegaConf

    node = OmegaConf.load(config_path)
    picked = {key: node[key] for key in ("model", "tuned_model", stage) if key in node}
    body = OmegaConf.to_yaml(OmegaConf.create(picked)).rstrip()
    return line + f"\n  <details><summary>{stage} config</summary>\n\n```yaml\n{body}\n```\n  </details>\n"


def _crosscoder_line(crosscoder_dir: Path) -> str:
    config_path = crosscoder_dir / "config.json"
    if not config_path.is_file():
        return f"Crosscoder: `{crosscoder_dir}` (no config.json found)."
    config = artifacts.read_json(config_path)
    keys = ("d_model", "n_latents", "variant", "k", "l1_coeff", "hook", "n_tokens", "source")
    facts = ", ".join(f"{k} = {config[k]}" for k in keys if k in config)
    return f"Crosscoder: `{crosscoder_dir}` ({facts})."


def _scan_section(scan_dir: Path, start: Path, exp: str) -> str:
    """The layer scan's figure and recommendation (stage scan, docs/scan.md)."""
    head = "## Layer scan: where the fine-tune acts\n"
    figure, recommendation = scan_dir / "scan.png", scan_dir / "recommendation.json"
    if not (figure.is_file() and recommendation.is_file()):
        return head + _missing("the layer scan", f"python -m reasondiff.scan +exp={exp}")
    found = artifacts.read_json(recommendation)
    follow_up = "".join(f"{command}\n" for command in found.get("follow_up", []))
    return (head + f"{found['line']}\n\n" + (f"```bash\n{follow_up}```\n\n" if follow_up else "")
            + _figure(figure, start, "Layer scan: fraction of KL(base ‖ tuned) closed by patching each residual "
                                     "layer, and representation change per layer")
            + f"\nPer-layer numbers: [scan.csv]({_rel(scan_dir / 'scan.csv', start)}).\n")


def build_report(exp_dir: Path, analyze_dir: Path, *, title: str, crosscoder_dir: Path | None = None) -> str:
    """The report's markdown; every path in it is relative to `analyze_dir` (where it is written)."""
    exp_dir, analyze_dir = Path(exp_dir), Path(analyze_dir)
    exp = exp_dir.name
    out = [f"# {title}\n", f"Experiment `{exp}`; every table below is a CSV next to this file or in its stage directory.\n"]
    if crosscoder_dir is not None:
        out.append(_crosscoder_line(Path(crosscoder_dir)))

    out.append("## Fine-tuning (Fig. 2)\n")
    loss_curve = exp_dir / "finetune" / "loss_curve.png"
    out.append(_figure(loss_curve, analyze_dir, "Fig. 2: SFT loss on s1K-1.1") if loss_curve.is_file()
               else _missing("the fine-tuning loss curve", f"python -m reasondiff.finetune +exp={exp}"))

    out.append("## Token-budget benchmarks (Table 1, Figs. 3-4)\n")
    bench = exp_dir / "bench"
    summary = bench / "summary.csv"
    out.append(_csv_section(summary, analyze_dir) if summary.is_file()
               else _missing("the benchmark summary", f"python -m reasondiff.bench +exp={exp}"))
    for png in sorted(bench.glob("*.png")) if bench.is_dir() else []:
        out.append(_figure(png, analyze_dir, png.stem.replace("_", " ")))

    out.append(_scan_section(exp_dir / "scan", analyze_dir, exp))

    out.append("## The crosscoder\n")
    factors = analyze_dir / "scaling_factors.csv"
    if factors.is_file():
        rows = read_csv_rows(factors)
        ratio = float(rows[1]["relative_to_base"]) if len(rows) > 1 else math.nan
        out.append("Per-model norm scaling factors (raw activation × factor = the crosscoder's input; harvest "
                   f"makes each model's mean norm √d_model). Ratio tuned / base = **{ratio:.4g}**.\n\n")
        out.append(_csv_section(factors, analyze_dir, floatfmt={"scaling_factor": ".5g", "relative_to_base": ".4g"}))
    curves = analyze_dir / "training_curves.png"
    if curves.is_file():
        out.append(_figure(curves, analyze_dir, "Training curves (train/metrics.csv, on training batches)"))
    train_dir = Path(crosscoder_dir) if crosscoder_dir is not None else exp_dir / "train"
    if (train_dir / "summary.json").is_file():
        summary = artifacts.read_json(train_dir / "summary.json")
        keys = ("l0", "fvu", "explained_variance_base", "explained_variance_tuned", "frac_dead", "eval_tokens")
        out.append(f"\ntrain's final evaluation ({summary.get('eval_source', 'on training data')}):\n\n"
                   + markdown_table([{k: summary.get(k) for k in keys}], keys, floatfmt={"eval_tokens": "d"}))
    train_metrics = train_dir / "metrics.csv"
    if train_metrics.is_file() and (rows := read_csv_rows(train_metrics)):
        out.append("\nLast logged training metrics (on the training batch):\n\n" + markdown_table(rows[-1:]))

    out.append("\n## Crosscoder reconstruction: CE-loss recovery (Table 2)\n")
    ce = analyze_dir / "ce_recovery.csv"
    if ce.is_file():
        out.append("CE recovered = (L_zero − L_spliced) / (L_zero − L_clean); each model's reconstruction comes from "
                   "the joint code of both models, scaling factors undone. Convention `paper` is Kissane & Nanda's "
                   "code behind the paper's Table 2 (splice positions 1:, zero-ablate every position, every "
                   "prediction scored); `sink_preserving` touches and scores only the positions the crosscoder "
                   "stands in for (docs/analyze.md). ΔCE = L_spliced − L_clean and KL(clean ‖ ·) are in nats per "
                   "prediction; brackets: 95% bootstrap intervals over contexts. `general` = held-out text, "
                   "`reasoning` = s1K conversations in the fine-tune's chat layout.\n\n")
        out.append(ce_table_markdown(read_csv_rows(ce)) + f"\nSource: [{ce.name}]({_rel(ce, analyze_dir)})\n")
    else:
        out.append(_missing("CE recovery", f"python -m reasondiff.analyze +exp={exp}"))
    fit = analyze_dir / "reconstruction.csv"
    if fit.is_file():
        out.append("\nOn the same held-out tokens: explained variance of each model's activations (in the "
                   "crosscoder's normalised space; `both` = 1 − FVU) and L0, active latents per token.\n\n")
        out.append(_csv_section(fit, analyze_dir, floatfmt={"explained_variance": ".3f", "l0": ".1f", "n_tokens": "d"}))

    out.append("\n## Decoder geometry (Figs. 5-6)\n")
    counts = analyze_dir / "class_counts.csv"
    if counts.is_file():
        out.append("Latents per class by the relative decoder norm r = ‖d_tuned‖ / (‖d_base‖ + ‖d_tuned‖) (the paper's "
                   "bands) and, in the `_delta` columns, by Minder et al.'s Δ = ½((‖d_tuned‖ − ‖d_base‖) / "
                   "max(‖d_base‖, ‖d_tuned‖) + 1) with their bins (Δ < 0.1, |Δ − ½| < 0.1, Δ > 0.9): a different "
                   "function of the norms, so the counts differ.\n\n")
        out.append(_csv_section(counts, analyze_dir, floatfmt={"fraction": ".3f", "fraction_delta": ".3f"}))
    else:
        out.append(_missing("latent classes", f"python -m reasondiff.analyze +exp={exp}"))
    for name, caption in (("relative_norm_hist.png", "Fig. 5: relative decoder norm of live latents"),
                          ("cosine_hist.png", "Fig. 6: decoder cosine of shared latents"),
                          ("decoder_norms.png", "‖d_base‖ vs ‖d_tuned‖ per latent (log axes), coloured by class"),
                          ("frequency_hist.png", "Firing frequency (log10) per latent class, held-out general text")):
        if (analyze_dir / name).is_file():
            out.append(_figure(analyze_dir / name, analyze_dir, caption))

    out.append("## Model-specific latents\n")
    freq = analyze_dir / "class_frequency.csv"
    if freq.is_file():
        out.append("Activation frequency per latent class on general vs reasoning text "
                   "(mean over the class's live latents; ratio > 1: fires more on reasoning).\n\n")
        out.append(_csv_section(freq, analyze_dir))
    scaling = analyze_dir / "latent_scaling_summary.csv"
    if scaling.is_file():
        out.append("\nLatent Scaling (Minder et al. 2025): ν = β(other model) / β(own model); "
                   "near 0 = truly model-specific, near 1 = the other model needs the direction too.\n\n")
        out.append(_csv_section(scaling, analyze_dir))
        if (analyze_dir / "latent_scaling.png").is_file():
            out.append(_figure(analyze_dir / "latent_scaling.png", analyze_dir, "Latent Scaling ratios"))
    for name, what in (("latents.html", "top-activating contexts, token-highlighted"),
                       ("latents.csv", "every latent: class by r and by Δ, relative norm r, Δ, cosine, frequencies, β, ν")):
        if (analyze_dir / name).is_file():
            out.append(f"- [{name}]({name}): {what}\n")

    out.append("\n## Configurations\n\n")
    for stage in STAGE_ORDER:
        out.append(_stage_config_section(stage, exp_dir / stage, analyze_dir))
    return "\n".join(part.rstrip("\n") + "\n" for part in out)
