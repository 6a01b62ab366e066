"""Budget sweeps of intervened models: the bench's own prefix-mode sweep, grader, tables, Wilson intervals and
McNemar test, run on models generating under an intervention (live.py).

Models swept (labels in bench_intervened/'s tables): `base` and `tuned` un-intervened, then
`base+patch_set` (the best selection's set at its largest size), `base+steer` (along the ADL vector) and
`tuned+ablate_set` (the same set) — every one on the same questions: the first `intervene.bench_n` of the
bench's own seeded subset (bench.limit, bench.seed), prompted exactly as the bench prompts the model it
is (the base model's prompt for base+..., the tuned one's for tuned+...), greedy, at the bench's token
limits up to `intervene.bench_limit`. generations.jsonl is appended batch by batch (a killed sweep
resumes), every row carrying a fingerprint of its model, prompt and intervention.

Beyond the bench's own tables: each intervened model against its un-intervened self on the same
questions (McNemar's exact test at the best limits, the difference of slopes with its bootstrap interval;
`vs_clean.csv`), and the format rates at the largest limit — opens the thinking (the think delimiter
in the prompt or the completion), reaches the answer delimiter — with Wilson intervals (`format.csv`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reasondiff.config import Config
from reasondiff.core.progress import Progress
from reasondiff.intervene.tables import write_csv

log = logging.getLogger(__name__)

VS_CLEAN_COLUMNS = ["model", "task", "paired_with", "n_paired", "performance", "performance_reference",
                    "performance_diff", "only_this", "only_other", "mcnemar_p", "scaling_diff", "scaling_diff_low",
                    "scaling_diff_high"]
FORMAT_COLUMNS = ["model", "task", "limit", "n", "opens_thinking", "opens_thinking_low", "opens_thinking_high",
                  "reaches_answer", "reaches_answer_low", "reaches_answer_high", "accuracy", "accuracy_low",
                  "accuracy_high"]


@dataclass
class Variant:
    """One model of the sweep: the loaded model, the bench's spec of the model it is, and how it is intervened."""

    label: str
    spec: Any
    """bench.ModelSpec of the un-intervened model (its prompt, its path in the fingerprint)."""
    model: Any
    tokenizer: Any
    """The model's own tokenizer (its chat template renders its prompts, as in the bench)."""
    hold: Callable[[], Any] | None = None
    """A no-argument context-manager factory holding the intervention (None: un-intervened)."""
    description: dict[str, Any] = dataclasses.field(default_factory=dict)
    """What the intervention is (fingerprinted with every row)."""
    reference: str = ""
    """The un-intervened model it is compared with."""


def sweep_config(cfg: Config) -> Config:
    """The bench settings of the sweep: prefix mode, the tasks and the limits cut by intervene.bench_*."""
    i, bench = cfg.intervene, cfg.bench
    limits = sorted(x for x in bench.token_limits if i.bench_limit is None or x <= i.bench_limit)
    if not limits:
        limits = [min(bench.token_limits)]
    if bench.mode != "prefix":
        log.info("intervene: the budget sweep runs in prefix mode (bench.mode=%s is for the bench stage)", bench.mode)
    return dataclasses.replace(cfg, bench=dataclasses.replace(bench, mode="prefix", token_limits=limits,
                                                              tasks=list(i.bench_tasks or bench.tasks),
                                                              models=["base", "tuned"]))


def model_specs(cfg: Config) -> dict[str, Any]:
    """The bench's own specs of the base and tuned models (their prompts, layouts, paths)."""
    from reasondiff import bench

    return {spec.label: spec for spec in bench.resolve_models(cfg)}


def questions_of(cfg: Config) -> dict[str, list]:
    """Per task the first intervene.bench_n questions of the bench's own seeded subset."""
    from reasondiff import bench

    n = cfg.intervene.bench_n
    return {task: bench.load_questions(task, cfg.bench)[:n] for task in cfg.bench.tasks}


def _fingerprint(cfg: Config, variant: Variant, task: str) -> str:
    from reasondiff import bench

    parts = {"bench": bench.sweep_fingerprint(cfg, variant.spec, task), "intervention": variant.description}
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_sweep(cfg: Config, out_dir: Path, variants: list[Variant]) -> dict[str, Any]:
    """Sweep every variant (resuming from generations.jsonl), then the bench's tables and figures plus
    vs_clean.csv and format.csv."""
    from reasondiff import bench

    out_dir.mkdir(parents=True, exist_ok=True)
    limits = sorted(cfg.bench.token_limits)
    questions = questions_of(cfg)
    generations = bench.GenerationLog(out_dir / "generations.jsonl")
    fingerprints = {(v.label, task): _fingerprint(cfg, v, task) for v in variants for task in cfg.bench.tasks}
    for variant in variants:
        done = generations.finished_questions(fingerprints=fingerprints, limits=limits)
        pending = {task: [q for q in qs if (variant.label, task, q.id) not in done] for task, qs in questions.items()}
        n_pending = sum(len(qs) for qs in pending.values())
        if not n_pending:
            continue
        tokenizer = variant.tokenizer
        generator = bench.HFGenerator(variant.model, tokenizer, batch_size=cfg.hardware.bench_batch_size)
        if variant.hold is not None:
            from reasondiff.intervene.live import LiveGenerator

            generator = LiveGenerator(generator, variant.hold)
        with Progress(total=n_pending, desc=f"intervene bench {variant.label}", unit="q") as progress:
            layout = bench.model_layout(cfg, variant.spec, tokenizer)
            for task, todo in pending.items():
                prompts = [bench.question_prompt(tokenizer, q, cfg, variant.spec) for q in todo]
                opened = bench.prompt_opened(tokenizer, todo, cfg, variant.spec, task)
                for chunk in bench.length_sorted_batches([len(p) for p in prompts], generator.chunk_size):
                    rows = bench.sweep_chunk(generator, tokenizer, [todo[k] for k in chunk], [prompts[k] for k in chunk],
                                             model=variant.label, cfg=cfg, fingerprint=fingerprints[(variant.label, task)],
                                             opened=opened, layout=layout)
                    generations.append(rows)
                    progress.update(len(chunk))
    rows = generations.current(fingerprints=fingerprints, limits=limits)
    references = {(task, q.id): q.reference for task, qs in questions.items() for q in qs}
    delimiters = {}
    for variant in variants:  # each graded in the layout of the model it is (base+... as base)
        layout = bench.model_layout(cfg, variant.spec, variant.tokenizer)
        delimiters[variant.label] = (layout.think_delimiter, layout.answer_delimiter)
    bench.regrade_rows(rows, references=references, delimiters=delimiters)
    tables = bench.write_reports(out_dir, rows, cfg)
    vs_clean = vs_clean_rows(rows, tables["summary"], variants, cfg)
    tuned_variant = next(v for v in variants if v.spec.label == "tuned")
    tuned = bench.model_layout(cfg, tuned_variant.spec, tuned_variant.tokenizer)
    formats = format_rows(rows, cfg, think=tuned.think_delimiter, answer=tuned.answer_delimiter)
    write_csv(out_dir / "vs_clean.csv", vs_clean, VS_CLEAN_COLUMNS)
    write_csv(out_dir / "format.csv", formats, FORMAT_COLUMNS)
    return {"results": tables["results"], "summary": tables["summary"], "vs_clean": vs_clean, "format": formats,
            "n_questions": {task: len(qs) for task, qs in questions.items()}, "token_limits": limits}


def vs_clean_rows(rows, summary, variants: list[Variant], cfg: Config) -> list[dict[str, Any]]:
    """Each intervened model against its un-intervened self (bench's paired comparison on shared questions)."""
    from reasondiff import bench

    by_key = {(s["model"], s["task"]): s for s in summary}
    out = []
    for variant in variants:
        if not variant.reference:
            continue
        for task in cfg.bench.tasks:
            this, other = by_key.get((variant.label, task)), by_key.get((variant.reference, task))
            if this is None or other is None:
                continue
            paired = bench.paired_comparison(rows, this, other, resamples=cfg.bench.bootstrap_resamples,
                                             seed=cfg.bench.seed, confidence_level=cfg.bench.confidence_level)
            out.append({"model": variant.label, "task": task, "performance": this["performance"],
                        "performance_reference": other["performance"], **paired})
    return out


def opens_thinking(row: dict[str, Any], think_delimiter: str | None) -> bool:
    return bool(row.get("thinking_opened")) or bool(think_delimiter) and think_delimiter in row["completion"]


def format_rows(rows, cfg: Config, *, think: str | None, answer: str | None) -> list[dict[str, Any]]:
    """At the largest limit, per model and task: how often the completion opens the thinking and reaches the
    answer delimiter of the TUNED model's layout (`think`, `answer`: does an intervened base model start
    reasoning the way the fine-tune taught?), and the accuracy, each with its Wilson interval (%)."""
    from reasondiff import bench

    limit = max(cfg.bench.token_limits)
    level = cfg.bench.confidence_level
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        if row["limit"] == limit:
            groups.setdefault((row["model"], row["task"]), []).append(row)
    out = []
    for (model, task), members in groups.items():
        n = len(members)
        counts = {"opens_thinking": sum(opens_thinking(r, think) for r in members),
                  "reaches_answer": sum(bool(answer) and answer in r["completion"] for r in members),
                  "accuracy": sum(bool(r["correct"]) for r in members)}
        row = {"model": model, "task": task, "limit": limit, "n": n}
        for key, k in counts.items():
            low, high = bench.wilson_interval(k, n, level)
            row.update({key: 100.0 * k / n, f"{key}_low": low, f"{key}_high": high})
        out.append(row)
    return out
