"""Stage 2 — token-budget sweeps: accuracy and wall time of each model × task × token limit.

One greedy generation per question at the largest limit serves every smaller limit: the output
at limit B is exactly its first B tokens (tests/test_bench.py proves it against separate runs),
so K limits cost one generation instead of K. Each prefix is scored on its *explicit* answer only
(see grading.py); with `bench.mode=forced` an unfinished prefix is closed s1-style (answer
delimiter + "Final Answer:") and the model writes at most `forced_answer_tokens` more.

Every finished batch is appended to generations.jsonl (flush + fsync); a re-run skips questions
already there. Tables and figures are rebuilt from that file, so they always match it.
"""

from __future__ import annotations

import csv
import gc
import hashlib
import io
import json
import logging
import math
import os
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from reasondiff import artifacts
from reasondiff.bench.generation import Generation, decode_completion, length_sorted_batches
from reasondiff.bench.grading import extract_answer, grade_extracted
from reasondiff.bench.prompts import Question, chat_prompt, load_questions, prompt_ids
from reasondiff.config import Config
from reasondiff.errors import UserError

log = logging.getLogger(__name__)

GENERATIONS = "generations.jsonl"
RESULTS = "results.csv"
SUMMARY = "summary.csv"
SUMMARY_MD = "summary.md"
ACCURACY_FIGURE = "accuracy_vs_limit.png"
TIME_FIGURE = "time_vs_limit.png"
RESULT_COLUMNS = ["model", "task", "limit", "accuracy", "n", "correct", "no_answer", "seconds",
                  "seconds_per_question", "mean_tokens"]
SUMMARY_COLUMNS = ["model", "task", "performance", "scaling", "best_limit", "n"]


# --- pure functions (Table 1) ---------------------------------------------------------------------

def scaling_slope(token_limits: Sequence[float], accuracy_pct: Sequence[float]) -> float:
    """Least-squares slope of accuracy (%) against token limit: % per generated token (Table 1's
    "scaling"). NaN with fewer than two distinct limits, where no slope exists."""
    if len(token_limits) != len(accuracy_pct):
        raise ValueError("token_limits and accuracy_pct differ in length")
    n = len(token_limits)
    if n < 2:
        return math.nan
    mean_x = sum(token_limits) / n
    mean_y = sum(accuracy_pct) / n
    sxx = sum((x - mean_x) ** 2 for x in token_limits)
    if sxx == 0:
        return math.nan
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(token_limits, accuracy_pct, strict=True)) / sxx


def performance(accuracy_pct: Sequence[float]) -> float:
    """Table 1's "performance": the best accuracy (%) over the token limits."""
    return max(accuracy_pct) if accuracy_pct else math.nan


# --- which models ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelSpec:
    label: str
    """Name in tables and figures: base, tuned, or the path/hub id as given."""
    path: str
    config_key: str


def resolve_models(cfg: Config) -> list[ModelSpec]:
    specs = []
    for entry in cfg.bench.models:
        if entry == "base":
            specs.append(ModelSpec("base", cfg.model.path, "model.path"))
        elif entry == "tuned":
            specs.append(ModelSpec("tuned", cfg.tuned_model, "tuned_model"))
        else:
            specs.append(ModelSpec(entry, entry, "bench.models"))
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise UserError(f"bench.models={cfg.bench.models} lists a model twice")
    return specs


# --- generations.jsonl: append-only, resumable ----------------------------------------------------

class GenerationLog:
    """Rows of generations.jsonl; appends are one write + fsync per finished batch.

    A kill during an append can leave a torn last line: it is dropped (and the file rewritten
    without it) on the next start, and that batch is generated again."""

    def __init__(self, path: Path):
        self.path = path
        self.rows: list[dict[str, Any]] = []
        if path.exists():
            self._load()

    def _load(self) -> None:
        text = self.path.read_text()
        lines = text.split("\n")
        torn = lines[-1] != ""  # the file always ends with "\n" after a complete append
        complete = lines[:-1]
        for number, line in enumerate(complete, start=1):
            if not line.strip():
                continue
            try:
                self.rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise UserError(f"{self.path}: line {number} is not JSON ({err}); delete the file or run with "
                                 "overwrite=true to start the sweep again") from err
        if torn:
            log.warning("%s: dropping a torn last line (interrupted write); its batch is redone", self.path)
            artifacts.write_text(self.path, "".join(line + "\n" for line in complete if line.strip()))

    def append(self, rows: Iterable[dict[str, Any]]) -> None:
        rows = list(rows)
        if not rows:
            return
        payload = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        self.rows.extend(rows)

    def current(self, *, fingerprints: dict[tuple[str, str], str], limits: Sequence[int]) -> list[dict[str, Any]]:
        """Rows of this sweep — its limits, and per (model, task) the same fingerprint (model path,
        prompt, mode, ...) — the last one winning per (model, task, id, limit)."""
        wanted = set(limits)
        latest: dict[tuple, dict[str, Any]] = {}
        for row in self.rows:
            key = (row.get("model"), row.get("task"))
            if row.get("limit") in wanted and key in fingerprints and row.get("fingerprint") == fingerprints[key]:
                latest[(row["model"], row["task"], row["id"], row["limit"])] = row
        return list(latest.values())

    def finished_questions(self, *, fingerprints: dict[tuple[str, str], str],
                           limits: Sequence[int]) -> set[tuple[str, str, str]]:
        """(model, task, id) with a row at every limit: nothing left to generate for them."""
        seen: dict[tuple[str, str, str], set[int]] = defaultdict(set)
        for row in self.current(fingerprints=fingerprints, limits=limits):
            seen[(row["model"], row["task"], row["id"])].add(row["limit"])
        return {key for key, got in seen.items() if got >= set(limits)}


# --- scoring one generation at every limit --------------------------------------------------------

@dataclass
class LimitOutcome:
    completion: str
    tokens: int
    seconds: float


def prefix_outcome(generation: Generation, limit: int, tokenizer, stop_ids: Sequence[int]) -> LimitOutcome:
    """What a separate greedy run capped at `limit` tokens would have produced, and when."""
    ids = generation.token_ids[:limit]
    seconds = generation.token_times[len(ids) - 1] if ids else 0.0
    return LimitOutcome(decode_completion(tokenizer, ids, stop_ids), len(ids), seconds)


def finished_within(generation: Generation, limit: int) -> bool:
    return generation.finished and len(generation.token_ids) <= limit


def forcing_suffix(prefix_text: str, answer_delimiter: str, final_answer_prompt: str) -> str:
    """s1 budget forcing: close the thinking and ask for the answer. If the model had already
    opened its answer section, only the final-answer prompt is added."""
    if answer_delimiter and answer_delimiter in prefix_text:
        return f"\n{final_answer_prompt}"
    return f"\n{answer_delimiter}\n{final_answer_prompt}"


def score_row(*, model: str, question: Question, limit: int, mode: str, outcome: LimitOutcome, forced: bool,
              batch: str, answer_delimiter: str, fingerprint: str = "") -> dict[str, Any]:
    answer = extract_answer(question.task, outcome.completion, answer_delimiter=answer_delimiter)
    return {
        "model": model, "task": question.task, "id": question.id, "limit": limit, "mode": mode,
        "fingerprint": fingerprint,
        "completion": outcome.completion, "answer": answer,
        "correct": grade_extracted(question.task, answer, question.reference),
        "no_answer": answer is None, "forced": forced, "tokens": outcome.tokens,
        "seconds": round(outcome.seconds, 6), "batch": batch,
    }


def sweep_chunk(generator, tokenizer, questions: Sequence[Question], prompts: Sequence[list[int]], *,
                model: str, cfg: Config, fingerprint: str = "") -> list[dict[str, Any]]:
    """Generate once at the largest limit, then score every limit (forcing answers if asked)."""
    bench, fmt = cfg.bench, cfg.format
    limits = sorted(bench.token_limits)
    stop_ids = generator.stop_ids
    generations = generator.generate(prompts, max(limits))
    batch = uuid.uuid4().hex[:12]
    outcomes: dict[tuple[int, int], tuple[LimitOutcome, bool]] = {}
    for limit in limits:
        to_force = []
        for index, generation in enumerate(generations):
            outcome = prefix_outcome(generation, limit, tokenizer, stop_ids)
            if bench.mode == "forced" and not finished_within(generation, limit):
                to_force.append((index, outcome))
            else:
                outcomes[(index, limit)] = (outcome, False)
        if to_force:
            suffixes = [forcing_suffix(o.completion, fmt.answer_delimiter, fmt.final_answer_prompt) for _, o in to_force]
            forced_prompts = [list(prompts[i]) + generations[i].token_ids[:limit] + prompt_ids(tokenizer, s)
                              for (i, _), s in zip(to_force, suffixes, strict=True)]
            answers = generator.generate(forced_prompts, bench.forced_answer_tokens)
            for (index, outcome), suffix, answer in zip(to_force, suffixes, answers, strict=True):
                text = outcome.completion + suffix + decode_completion(tokenizer, answer.token_ids, stop_ids)
                seconds = outcome.seconds + (answer.token_times[-1] if answer.token_times else 0.0)
                outcomes[(index, limit)] = (LimitOutcome(text, outcome.tokens + len(answer.token_ids), seconds), True)
    rows = []
    for index, question in enumerate(questions):
        for limit in limits:
            outcome, forced = outcomes[(index, limit)]
            rows.append(score_row(model=model, question=question, limit=limit, mode=bench.mode, outcome=outcome,
                                  forced=forced, batch=batch, answer_delimiter=fmt.answer_delimiter,
                                  fingerprint=fingerprint))
    return rows


def sweep_fingerprint(cfg: Config, spec: ModelSpec, task: str) -> str:
    """What a stored generation depends on besides the question: a resumed run reuses only rows
    with the same fingerprint, so a changed prompt, model path or mode never mixes in stale rows."""
    bench = cfg.bench
    prompts = asdict(bench.prompts)
    parts = {
        "model_path": spec.path, "revision": cfg.model.revision if spec.label == "base" else None,
        "dtype": cfg.hardware.dtype, "backend": bench.backend, "mode": bench.mode,
        "forced_answer_tokens": bench.forced_answer_tokens if bench.mode == "forced" else None,
        "prompt": {k: v for k, v in prompts.items() if k.startswith(task)}, "system_prompt": bench.system_prompt,
        "start_thinking": bench.start_thinking, "format": asdict(cfg.format),
    }
    return hashlib.sha1(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


# --- generators -----------------------------------------------------------------------------------

def make_generator(cfg: Config, spec: ModelSpec):
    """A loaded model behind `generate(prompts, max_new_tokens)`, plus its tokenizer."""
    if cfg.bench.backend == "vllm":
        from reasondiff.bench.generation import VLLMGenerator

        max_len = max(cfg.bench.token_limits) + cfg.bench.forced_answer_tokens + 4096
        generator = VLLMGenerator(spec.path, dtype=cfg.hardware.dtype, seed=cfg.seed,
                                  gpu_memory_utilization=cfg.bench.vllm_gpu_memory_utilization,
                                  max_model_len=max_len, trust_remote_code=cfg.model.trust_remote_code)
        return generator, generator.tokenizer
    from reasondiff.bench.generation import HFGenerator
    from reasondiff.models import load_model

    revision = cfg.model.revision if spec.label == "base" else None
    model, tokenizer = load_model(spec.path, cfg.hardware, config_key=spec.config_key, revision=revision,
                                  trust_remote_code=cfg.model.trust_remote_code)
    return HFGenerator(model, tokenizer, batch_size=cfg.hardware.bench_batch_size), tokenizer


def _check_context(tokenizer, generator, prompts: Sequence[list[int]], cfg: Config, spec: ModelSpec) -> None:
    model = getattr(generator, "model", None)
    max_positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if not max_positions or not prompts:
        return
    extra = cfg.bench.forced_answer_tokens + 16 if cfg.bench.mode == "forced" else 0
    need = max(len(p) for p in prompts) + max(cfg.bench.token_limits) + extra
    if need > max_positions:
        raise UserError(f"{spec.config_key}={spec.path}: the longest prompt plus max(bench.token_limits) needs "
                        f"{need} positions, the model has {max_positions}; lower bench.token_limits")


def _release(generator) -> None:
    import torch

    del generator
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --- tables and figures ---------------------------------------------------------------------------

def results_table(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (model, task, limit): accuracy (%), no-answer count, and wall time.

    `seconds` is the sweep's wall time to reach that limit for every question (per batch, the time
    its slowest member reached the limit, summed over batches): what a run at that limit alone costs."""
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["model"], row["task"], row["limit"])].append(row)
    table = []
    for (model, task, limit), members in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])):
        by_batch: dict[str, float] = defaultdict(float)
        for row in members:
            by_batch[row["batch"]] = max(by_batch[row["batch"]], row["seconds"])
        n = len(members)
        correct = sum(bool(r["correct"]) for r in members)
        table.append({
            "model": model, "task": task, "limit": limit, "accuracy": round(100.0 * correct / n, 4), "n": n,
            "correct": correct, "no_answer": sum(bool(r["no_answer"]) for r in members),
            "seconds": round(sum(by_batch.values()), 4),
            "seconds_per_question": round(sum(r["seconds"] for r in members) / n, 6),
            "mean_tokens": round(sum(r["tokens"] for r in members) / n, 3),
        })
    return table


def summary_table(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Table 1: per (model, task), performance (best accuracy %) and scaling (% per token)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in results:
        groups[(row["model"], row["task"])].append(row)
    summary = []
    for (model, task), members in sorted(groups.items()):
        members = sorted(members, key=lambda r: r["limit"])
        accuracy = [r["accuracy"] for r in members]
        best = max(members, key=lambda r: (r["accuracy"], -r["limit"]))
        summary.append({"model": model, "task": task, "performance": performance(accuracy),
                        "scaling": scaling_slope([r["limit"] for r in members], accuracy),
                        "best_limit": best["limit"], "n": members[0]["n"]})
    return summary


def _csv_text(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def summary_markdown(summary: Sequence[dict[str, Any]], results: Sequence[dict[str, Any]], mode: str) -> str:
    lines = ["# Token-budget sweep", "",
             f"Mode: `{mode}`. Performance = best accuracy (%) over the token limits; scaling = least-squares "
             "slope of accuracy (%) against the token limit (% per generated token).", "",
             "| model | task | performance (%) | scaling (%/token) | best limit | n |",
             "|---|---|---:|---:|---:|---:|"]
    for row in summary:
        scaling = "n/a" if math.isnan(row["scaling"]) else f"{row['scaling']:.5f}"
        lines.append(f"| {row['model']} | {row['task']} | {row['performance']:.1f} | {scaling} | "
                     f"{row['best_limit']} | {row['n']} |")
    lines += ["", "| model | task | limit | accuracy (%) | no answer | s / question |", "|---|---|---:|---:|---:|---:|"]
    for row in results:
        lines.append(f"| {row['model']} | {row['task']} | {row['limit']} | {row['accuracy']:.1f} | "
                     f"{row['no_answer']}/{row['n']} | {row['seconds_per_question']:.3f} |")
    return "\n".join(lines) + "\n"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_by_task(results: Sequence[dict[str, Any]], path: Path, *, value: str, ylabel: str, title: str) -> Path:
    """One panel per task, one line per model, against the token limit (log2 axis)."""
    plt = _pyplot()
    tasks = list(dict.fromkeys(r["task"] for r in results))
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        for model in dict.fromkeys(r["model"] for r in results):
            points = sorted((r["limit"], r[value]) for r in results if r["task"] == task and r["model"] == model)
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=model)
        ax.set_xscale("log", base=2)
        ax.set_title(task)
        ax.set_xlabel("token limit")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(ylabel)
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    artifacts.atomic_save(path, lambda tmp: fig.savefig(tmp, dpi=130, bbox_inches="tight", format="png"))
    plt.close(fig)
    return path


def write_reports(directory: Path, rows: Sequence[dict[str, Any]], mode: str) -> dict[str, Any]:
    results = results_table(rows)
    summary = summary_table(results)
    artifacts.write_text(directory / RESULTS, _csv_text(results, RESULT_COLUMNS))
    artifacts.write_text(directory / SUMMARY, _csv_text(summary, SUMMARY_COLUMNS))
    artifacts.write_text(directory / SUMMARY_MD, summary_markdown(summary, results, mode))
    if results:
        plot_by_task(results, directory / ACCURACY_FIGURE, value="accuracy", ylabel="accuracy (%)",
                     title="Accuracy vs token limit (Fig. 4)")
        plot_by_task(results, directory / TIME_FIGURE, value="seconds_per_question", ylabel="seconds per question",
                     title="Wall time vs token limit (Fig. 3)")
    return {"results": results, "summary": summary}


# --- the stage ------------------------------------------------------------------------------------

def run(cfg: Config, ctx) -> dict[str, Any]:
    """The sweep: every model × task × token limit, resumed from generations.jsonl."""
    bench = cfg.bench
    limits = sorted(bench.token_limits)
    specs = resolve_models(cfg)
    questions = {task: load_questions(task, bench) for task in bench.tasks}
    for task in bench.tasks:
        data = bench.data[task]
        ctx.inputs[f"data.{task}"] = {"path": data.path, "config_name": data.config_name, "split": data.split,
                                      "n_questions": len(questions[task])}
    ctx.inputs["models"] = {spec.label: spec.path for spec in specs}
    generation_log = GenerationLog(ctx.dir / GENERATIONS)
    fingerprints = {(spec.label, task): sweep_fingerprint(cfg, spec, task) for spec in specs for task in bench.tasks}

    for spec in specs:
        done = generation_log.finished_questions(fingerprints=fingerprints, limits=limits)
        pending = {task: [q for q in questions[task] if (spec.label, task, q.id) not in done] for task in bench.tasks}
        n_pending = sum(len(qs) for qs in pending.values())
        if n_pending == 0:
            log.info("bench: %s already swept (generations.jsonl); skipping", spec.label)
            continue
        log.info("bench: %s (%s): %d questions to generate at %d tokens", spec.label, spec.path, n_pending, limits[-1])
        generator, tokenizer = make_generator(cfg, spec)
        try:
            with tqdm(total=n_pending, desc=f"bench {spec.label}", unit="q") as progress:
                for task in bench.tasks:
                    todo = pending[task]
                    prompts = [prompt_ids(tokenizer, chat_prompt(tokenizer, q.user_turn, system_prompt=bench.system_prompt,
                                                                 start_thinking=bench.start_thinking, fmt=cfg.format))
                               for q in todo]
                    _check_context(tokenizer, generator, prompts, cfg, spec)
                    for chunk in length_sorted_batches([len(p) for p in prompts], generator.chunk_size):
                        rows = sweep_chunk(generator, tokenizer, [todo[i] for i in chunk], [prompts[i] for i in chunk],
                                           model=spec.label, cfg=cfg, fingerprint=fingerprints[(spec.label, task)])
                        generation_log.append(rows)
                        progress.update(len(chunk))
        finally:
            _release(generator)

    rows = generation_log.current(fingerprints=fingerprints, limits=limits)
    tables = write_reports(ctx.dir, rows, bench.mode)
    for row in tables["results"]:
        ctx.metrics.log({f"{row['model']}/{row['task']}/accuracy": row["accuracy"],
                         f"{row['model']}/{row['task']}/seconds_per_question": row["seconds_per_question"]},
                        step=row["limit"])
    for row in tables["summary"]:
        log.info("bench: %s %s performance %.1f%% scaling %.5f %%/token", row["model"], row["task"],
                 row["performance"], row["scaling"])
    return {
        "generations": GENERATIONS, "results": RESULTS, "summary": SUMMARY, "summary_md": SUMMARY_MD,
        "figures": [ACCURACY_FIGURE, TIME_FIGURE], "mode": bench.mode, "token_limits": limits,
        "summary_rows": [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
                         for r in tables["summary"]],
    }
