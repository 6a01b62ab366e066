"""Stage 2 — token-budget sweeps: accuracy and wall time of each model × task × token limit.

One greedy generation per question at the largest limit serves every smaller limit: the output
at limit B is exactly its first B tokens (tests/test_bench.py proves it against separate runs),
so K limits cost one generation instead of K. Each prefix is graded on what it answers (see
grading.py): the bench tells the grader whether the prefix finished, that is, whether the model
ended its turn within the limit. With `bench.mode=forced`, s1's budget forcing (forcing.py) caps
the thinking at each limit and forces an answer. With `bench.protocol=lm_eval`, gsm8k and boolq
follow lm-evaluation-harness's own protocols (lmeval.py).

Every finished batch is appended to generations.jsonl (flush + fsync); a re-run skips questions
already there. Tables and figures are rebuilt from that file, so they always match it. Rows
graded by an older grader are regraded first (scoring.py), and none is regenerated for it.

Under torchrun (docs/distributed.md) each task's questions (the seeded subset) are split into
contiguous blocks, one per rank; each rank appends to its own generations.rank<r>.jsonl (resumed
the same way), and rank 0 gathers them into generations.jsonl in question order before computing
the tables once. With bench.backend=vllm, use one process and vLLM's own tensor parallelism
(bench.vllm_tensor_parallel_size) instead.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import math
import os
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from reasondiff.bench import forcing, lmeval, plots, scoring
from reasondiff.bench.generation import Generation, decode_completion, length_sorted_batches
from reasondiff.bench.prompts import Question, chat_prompt, load_questions, prompt_ids
from reasondiff.bench.tables import (
    RESULT_COLUMNS,
    SUMMARY_COLUMNS,
    csv_text,
    performance,
    results_table,
    scaling_slope,
    summary_markdown,
    summary_table,
)
from reasondiff.config import Config
from reasondiff.core import artifacts, distributed, figures
from reasondiff.core.errors import UserError
from reasondiff.core.progress import Progress
from reasondiff.lm.layouts import ReasoningLayout, layout_for, layout_named

log = logging.getLogger(__name__)

GENERATIONS = "generations.jsonl"
RESULTS = "results.csv"
SUMMARY = "summary.csv"
SUMMARY_MD = "summary.md"
ACCURACY_FIGURE = "accuracy_vs_limit.png"
TIME_FIGURE = "time_vs_limit.png"
__all__ = ["GenerationLog", "RESULT_COLUMNS", "SUMMARY_COLUMNS", "performance", "results_table", "run",
           "scaling_slope", "summary_table", "sweep_chunk"]


# --- which models ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelSpec:
    label: str
    """Name in tables and figures: base, tuned, or the path/hub id as given."""
    path: str
    config_key: str
    entry: str = ""
    """As bench.models lists it (base, tuned, or the path): what thinking_models / plain_prompt_models name."""
    role: str = "tuned"
    """Whose reasoning layout it uses: base (format.base_layout) or tuned (format.layout). A model
    listed by path is a tuned one when thinking_models names it, else a plain one (layout none)."""


def resolve_models(cfg: Config) -> list[ModelSpec]:
    specs = []
    for entry in cfg.bench.models:
        if entry == "base":
            specs.append(ModelSpec("base", cfg.model.path, "model.path", "base", "base"))
        elif entry == "tuned":
            specs.append(ModelSpec("tuned", cfg.tuned_model, "tuned_model", "tuned"))
        else:
            specs.append(ModelSpec(entry, entry, "bench.models", entry,
                                   "tuned" if entry in cfg.bench.thinking_models else "plain"))
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


# --- prompts -------------------------------------------------------------------------------------

def model_layout(cfg: Config, spec: ModelSpec, tokenizer=None) -> ReasoningLayout:
    """The layout bench prompts, forces and grades `spec` in: its own (format.layout or
    format.base_layout). In forced mode a model without one is forced with the tuned model's
    strings, as s1's harness forces every model it evaluates with the same delimiters, when its
    tokenizer has the tuned layout's stop as one token (given `tokenizer`); otherwise (a Qwen2.5
    base beside an R1 distill has no `</think>` token) it gets one plain generation, which is how
    s1 scores its base models."""
    until = cfg.bench.forcing.until_thinking
    own = layout_named("none", cfg.format) if spec.role == "plain" else layout_for(cfg.format, spec.role,
                                                                                     until_thinking=until)
    if not own.thinks and cfg.bench.mode == "forced":
        tuned = layout_for(cfg.format, "tuned", until_thinking=until)
        if tuned.thinks and (tokenizer is None or len(forcing.encode(tokenizer, tuned.stop)) == 1):
            return tuned
    return own


def thinking_opened(cfg: Config, spec: ModelSpec, task: str) -> bool:
    """Whether this model's prompt opens the thinking: a thinking model, in forced mode (as s1) or
    with bench.start_thinking; never in lm-eval's few-shot prompt."""
    bench = cfg.bench
    if bench.protocol == "lm_eval" and task == "gsm8k":
        return False
    return spec.entry in bench.thinking_models and (bench.mode == "forced" or bench.start_thinking)


def question_prompt(tokenizer, question: Question, cfg: Config, spec: ModelSpec, *,
                    shots: Sequence[dict[str, Any]] = ()) -> list[int]:
    """Token ids of the prompt for one question: the chat template (or the bare user turn for a
    plain-prompt model, or lm-eval's few-shot text), opened with the think delimiter when asked."""
    bench = cfg.bench
    if bench.protocol == "lm_eval" and question.task == "gsm8k":
        return prompt_ids(tokenizer, lmeval.gsm8k_fewshot_prompt(question.question, shots))
    return prompt_ids(tokenizer, question_text(tokenizer, question, cfg, spec))


def question_text(tokenizer, question: Question, cfg: Config, spec: ModelSpec) -> str:
    """The rendered chat prompt of one question in the model's layout (see `question_prompt`)."""
    return chat_prompt(tokenizer, question.user_turn, system_prompt=cfg.bench.system_prompt,
                       start_thinking=thinking_opened(cfg, spec, question.task), layout=model_layout(cfg, spec, tokenizer),
                       plain=spec.entry in cfg.bench.plain_prompt_models)


def prompt_opened(tokenizer, questions: Sequence[Question], cfg: Config, spec: ModelSpec, task: str) -> bool:
    """Whether the prompts of this model and task open the thinking: bench opened it
    (thinking_models), or the chat template itself ends with the layout's opening (R1-Distill's
    current template ends with `<think>\n`)."""
    if cfg.bench.protocol == "lm_eval" and task == "gsm8k":
        return False
    if thinking_opened(cfg, spec, task):
        return True
    return bool(questions) and model_layout(cfg, spec, tokenizer).opened_in(
        question_text(tokenizer, questions[0], cfg, spec))


def fewshot_shots(cfg: Config, questions: Sequence[Question]) -> dict[str, list[dict[str, Any]]]:
    """protocol=lm_eval: gsm8k's shots per question id, drawn as lm-eval draws them."""
    from reasondiff.lm.data_sources import load_rows

    bench = cfg.bench
    data = bench.fewshot_data
    pool = load_rows(data.path, split=data.split, config_name=data.config_name, config_key="bench.fewshot_data.path",
                     fields=("question", "answer"))
    if len(pool) < bench.num_fewshot:
        raise UserError(f"bench.fewshot_data.path={data.path}: {len(pool)} rows, fewer than bench.num_fewshot="
                        f"{bench.num_fewshot}")
    draws = lmeval.fewshot_draws(len(pool), [int(q.id) for q in questions], bench.num_fewshot, bench.fewshot_seed)
    return {q.id: [dict(pool[j]) for j in draws[int(q.id)]] for q in questions}


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
    """The model ended its turn within `limit` tokens (the stop token itself counts)."""
    return generation.finished and len(generation.token_ids) <= limit


def score_row(*, model: str, question: Question, limit: int, cfg: Config, completion: str, finished: bool,
              opened: bool, tokens: int, seconds: float, batch: str, fingerprint: str = "",
              layout: ReasoningLayout | None = None, **extra: Any) -> dict[str, Any]:
    bench = cfg.bench
    layout = layout or layout_for(cfg.format, "tuned", until_thinking=bench.forcing.until_thinking)
    if bench.protocol == "lm_eval" and question.task == "gsm8k":
        # lm-eval stops at "Question:": a prefix that reached it has finished
        finished = finished or lmeval.cut_at_stop(completion)[1]
    row = {
        "model": model, "task": question.task, "id": question.id, "limit": limit, "mode": bench.mode,
        "protocol": bench.protocol, "fingerprint": fingerprint, "completion": completion, "finished": finished,
        "thinking_opened": opened, "reference": question.reference, "tokens": tokens,
        "seconds": round(seconds, 6), "batch": batch, "forced": False, **extra,
    }
    row.update(scoring.score(question.task, completion, question.reference, finished=finished, thinking_opened=opened,
                             protocol=bench.protocol, think_delimiter=layout.think_delimiter,
                             answer_delimiter=layout.answer_delimiter))
    return row


def sweep_chunk(generator, tokenizer, questions: Sequence[Question], prompts: Sequence[list[int]], *,
                model: str, cfg: Config, fingerprint: str = "", opened: bool = False,
                layout: ReasoningLayout | None = None) -> list[dict[str, Any]]:
    """Generate once at the largest limit, then score every limit (prefix mode); or s1's budget
    forcing at every limit (forced mode), in the model's reasoning `layout` (default: the tuned one)."""
    bench = cfg.bench
    layout = layout or layout_for(cfg.format, "tuned", until_thinking=bench.forcing.until_thinking)
    limits = sorted(bench.token_limits)
    batch = uuid.uuid4().hex[:12]
    rows = []
    common = {"model": model, "cfg": cfg, "opened": opened, "batch": batch, "fingerprint": fingerprint,
              "layout": layout}
    if bench.mode == "forced" and layout.thinks:
        forced = forcing.force(generator, tokenizer, prompts, limits, opened=opened, layout=layout,
                               n_ignore=bench.forcing.thinking_n_ignore, ignore_str=bench.forcing.thinking_n_ignore_str,
                               max_tokens_answer=bench.forcing.max_tokens_answer)
        for index, question in enumerate(questions):
            for limit in limits:
                o = forced[(index, limit)]
                rows.append(score_row(question=question, limit=limit, completion=o.completion, finished=o.finished,
                                      tokens=o.thinking_tokens + o.answer_tokens, seconds=o.seconds,
                                      forced=o.budget_hit, thinking_tokens=o.thinking_tokens,
                                      answer_tokens=o.answer_tokens, waits=o.waits, **common))
        return rows
    stop_ids = generator.stop_ids
    generations = generator.generate(prompts, max(limits))
    for question, generation in zip(questions, generations, strict=True):
        for limit in limits:
            outcome = prefix_outcome(generation, limit, tokenizer, stop_ids)
            rows.append(score_row(question=question, limit=limit, completion=outcome.completion,
                                  finished=finished_within(generation, limit), tokens=outcome.tokens,
                                  seconds=outcome.seconds, **common))
    return rows


def loglikelihood_rows(generator, tokenizer, questions: Sequence[Question], *, model: str, cfg: Config,
                       fingerprint: str) -> list[dict[str, Any]]:
    """protocol=lm_eval boolq: one log-likelihood choice per question, the same row at every limit."""
    model_obj = getattr(generator, "model", None)
    if model_obj is None:
        raise UserError("bench.protocol=lm_eval scores boolq by log-likelihood with the transformers model; "
                        "use bench.backend=hf (or drop boolq from bench.tasks)")
    batch = uuid.uuid4().hex[:12]
    rows = []
    for question in questions:
        start = time.perf_counter()
        choice, scores = lmeval.boolq_choice(model_obj, tokenizer, lmeval.boolq_context(question.question,
                                                                                         question.passage))
        seconds = time.perf_counter() - start
        for limit in sorted(cfg.bench.token_limits):
            correct = (choice == "yes") == bool(question.reference)
            rows.append({"model": model, "task": "boolq", "id": question.id, "limit": limit, "mode": cfg.bench.mode,
                         "protocol": "lm_eval", "fingerprint": fingerprint, "completion": f" {choice}",
                         "finished": True, "thinking_opened": False, "reference": question.reference, "tokens": 0,
                         "seconds": round(seconds, 6), "batch": batch, "forced": False, "answer": choice,
                         "answer_source": "lm_eval_loglikelihood", "correct": correct, "no_answer": False,
                         "correct_finished_only": correct,
                         "loglikelihoods": {"no": scores[0], "yes": scores[1]}, "grader": scoring.GRADER_VERSION})
    return rows


def sweep_fingerprint(cfg: Config, spec: ModelSpec, task: str) -> str:
    """What a stored generation depends on besides the question: a resumed run reuses only rows
    with the same fingerprint, so a changed prompt, model path or mode never mixes in stale rows.
    Grading is not in it: rows are regraded from what they store (scoring.py). Keys added since
    are only present when not at their defaults, so rows of earlier runs stay valid."""
    bench = cfg.bench
    prompts = asdict(bench.prompts)
    parts: dict[str, Any] = {
        "model_path": spec.path, "revision": cfg.model.revision if spec.label == "base" else None,
        "dtype": cfg.hardware.dtype, "backend": bench.backend, "mode": bench.mode,
        "forced_answer_tokens": None,
        "prompt": {k: v for k, v in prompts.items() if k.startswith(task)}, "system_prompt": bench.system_prompt,
        "start_thinking": thinking_opened(cfg, spec, task),
        "format": {k: v for k, v in asdict(cfg.format).items() if k not in ("layout", "base_layout")},
    }
    layout = model_layout(cfg, spec).name
    if layout != ("none" if spec.role != "tuned" and bench.mode == "prefix" else "s1"):
        parts["layout"] = layout
    if bench.mode == "forced":
        parts["forcing"] = asdict(bench.forcing)
    if spec.entry in bench.plain_prompt_models:
        parts["plain_prompt"] = True
    if bench.protocol == "lm_eval" and task in ("gsm8k", "boolq"):
        parts["protocol"] = "lm_eval"
        parts["prompt"] = ({"fewshot": asdict(bench.fewshot_data), "num_fewshot": bench.num_fewshot,
                            "fewshot_seed": bench.fewshot_seed} if task == "gsm8k" else "lm_eval boolq")
    return hashlib.sha1(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


# --- generators -----------------------------------------------------------------------------------

def make_generator(cfg: Config, spec: ModelSpec):
    """A loaded model behind `generate(prompts, max_new_tokens)`, plus its tokenizer."""
    bench = cfg.bench
    if bench.backend == "vllm":
        from reasondiff.bench.generation import VLLMGenerator

        answer = bench.forcing.max_tokens_answer + 16 if bench.mode == "forced" else 0
        max_len = max(bench.token_limits) + answer + 4096
        generator = VLLMGenerator(spec.path, dtype=cfg.hardware.dtype, seed=cfg.seed,
                                  gpu_memory_utilization=bench.vllm_gpu_memory_utilization,
                                  tensor_parallel_size=bench.vllm_tensor_parallel_size, max_model_len=max_len, trust_remote_code=cfg.model.trust_remote_code)
        return generator, generator.tokenizer
    from reasondiff.bench.generation import HFGenerator
    from reasondiff.lm.models import load_model

    revision = cfg.model.revision if spec.label == "base" else None
    model, tokenizer = load_model(spec.path, cfg.hardware, config_key=spec.config_key, revision=revision,
                                  trust_remote_code=cfg.model.trust_remote_code)
    return HFGenerator(model, tokenizer, batch_size=cfg.hardware.bench_batch_size), tokenizer


def _check_context(tokenizer, generator, prompts: Sequence[list[int]], cfg: Config, spec: ModelSpec) -> None:
    model = getattr(generator, "model", None)
    max_positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if not max_positions or not prompts:
        return
    extra = cfg.bench.forcing.max_tokens_answer + 16 if cfg.bench.mode == "forced" else 0
    need = max(len(p) for p in prompts) + max(cfg.bench.token_limits) + extra
    if need > max_positions:
        forced = " + bench.forcing.max_tokens_answer" if extra else ""
        raise UserError(f"{spec.config_key}={spec.path}: the longest prompt plus max(bench.token_limits){forced} needs "
                        f"{need} positions, the model has {max_positions}; lower bench.token_limits")


def _release(generator) -> None:
    import torch

    del generator
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --- tables and figures ---------------------------------------------------------------------------

def gather_rank_generations(directory: Path, world: int, questions: dict[str, list[Question]],
                            models: Sequence[str], *, fingerprints: dict[tuple[str, str], str],
                            limits: Sequence[int]) -> list[dict[str, Any]]:
    """The ranks' generations.rank<r>.jsonl as one generations.jsonl, rows in (model, task, question,
    limit) order; every question's rows must be there (a rank that lost work is an error)."""
    rows = [row for rank in range(world)
            for row in GenerationLog(directory / f"generations.rank{rank}.jsonl").current(fingerprints=fingerprints,
                                                                                        limits=limits)]
    position = {(task, q.id): i for task, qs in questions.items() for i, q in enumerate(qs)}
    model_order = {m: i for i, m in enumerate(models)}
    task_order = {t: i for i, t in enumerate(questions)}
    rows.sort(key=lambda r: (model_order[r["model"]], task_order[r["task"]], position[(r["task"], r["id"])],
                             r["limit"]))
    expected = len(models) * sum(len(qs) for qs in questions.values()) * len(limits)
    if len(rows) != expected:
        raise UserError(f"{directory}: the ranks' generations hold {len(rows)} rows, {expected} expected; re-run the "
                        "same torchrun command to resume the missing questions")
    artifacts.write_text(directory / GENERATIONS, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return rows


def device_label(cfg: Config) -> str:
    """Where generation ran, for Fig. 3's caption: the GPU's name, or cpu and its thread count."""
    import torch

    from reasondiff.lm.models import resolve_device

    device = resolve_device(cfg.hardware)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({torch.get_num_threads()} threads)"


def write_reports(directory: Path, rows: Sequence[dict[str, Any]], cfg: Config) -> dict[str, Any]:
    bench = cfg.bench
    results = results_table(rows, confidence_level=bench.confidence_level)
    summary = summary_table(rows, results, resamples=bench.bootstrap_resamples, seed=bench.seed,
                            confidence_level=bench.confidence_level)
    artifacts.write_text(directory / RESULTS, csv_text(results, RESULT_COLUMNS))
    artifacts.write_text(directory / SUMMARY, csv_text(summary, SUMMARY_COLUMNS))
    artifacts.write_text(directory / SUMMARY_MD, summary_markdown(
        summary, results, mode=bench.mode, protocol=bench.protocol, confidence_level=bench.confidence_level,
        resamples=bench.bootstrap_resamples))
    if results:
        plots.accuracy_figure(results, directory / ACCURACY_FIGURE, confidence_level=bench.confidence_level)
        plots.time_figure(results, directory / TIME_FIGURE, batch_size=cfg.hardware.bench_batch_size,
                          device=device_label(cfg), backend=bench.backend)
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
    shots = fewshot_shots(cfg, questions["gsm8k"]) if bench.protocol == "lm_eval" and "gsm8k" in questions else {}
    fingerprints = {(spec.label, task): sweep_fingerprint(cfg, spec, task) for spec in specs for task in bench.tasks}
    if distributed.is_distributed():
        if bench.backend == "vllm":
            raise UserError("bench.backend=vllm runs in one process (vLLM parallelises itself: "
                            "bench.vllm_tensor_parallel_size); launch it with python -m, not torchrun")
        every_question = questions
        questions = {task: [q for _, q in distributed.shard(qs)] for task, qs in questions.items()}
        generation_log = GenerationLog(ctx.dir / f"generations.rank{distributed.rank()}.jsonl")
    else:
        generation_log = GenerationLog(ctx.dir / GENERATIONS)

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
            with Progress(total=n_pending, desc=f"bench {spec.label}", unit="q") as progress:
                for task in bench.tasks:
                    todo = pending[task]
                    fingerprint = fingerprints[(spec.label, task)]
                    if bench.protocol == "lm_eval" and task == "boolq" and todo:
                        generation_log.append(loglikelihood_rows(generator, tokenizer, todo, model=spec.label, cfg=cfg,
                                                                 fingerprint=fingerprint))
                        progress.update(len(todo))
                        continue
                    prompts = [question_prompt(tokenizer, q, cfg, spec, shots=shots.get(q.id, ())) for q in todo]
                    _check_context(tokenizer, generator, prompts, cfg, spec)
                    opened = prompt_opened(tokenizer, todo, cfg, spec, task)
                    for chunk in length_sorted_batches([len(p) for p in prompts], generator.chunk_size):
                        rows = sweep_chunk(generator, tokenizer, [todo[i] for i in chunk], [prompts[i] for i in chunk],
                                           model=spec.label, cfg=cfg, fingerprint=fingerprint, opened=opened,
                                           layout=model_layout(cfg, spec, tokenizer))
                        generation_log.append(rows)
                        progress.update(len(chunk))
        finally:
            _release(generator)

    rows = generation_log.current(fingerprints=fingerprints, limits=limits)
    if distributed.is_distributed():
        distributed.barrier()  # every rank's generations are on disk
        if not distributed.is_main_process():
            return {}
        questions = every_question
        rows = gather_rank_generations(ctx.dir, distributed.world_size(), questions, [s.label for s in specs],
                                       fingerprints=fingerprints, limits=limits)
    references = {(task, q.id): q.reference for task, qs in questions.items() for q in qs}
    layouts = {spec.label: model_layout(cfg, spec) for spec in specs}
    regraded = scoring.regrade_rows(rows, references=references,
                               delimiters={label: (lay.think_delimiter, lay.answer_delimiter)
                                           for label, lay in layouts.items()})
    if regraded:
        log.info("bench: %d stored rows regraded with grader %s (generations.jsonl keeps what they were "
                 "written with)", regraded, scoring.GRADER_VERSION)
    tables = write_reports(ctx.dir, rows, cfg)
    for row in tables["results"]:
        ctx.metrics.log({f"{row['model']}/{row['task']}/accuracy": row["accuracy"],
                         f"{row['model']}/{row['task']}/seconds_per_question": row["seconds_per_question"]},
                        step=row["limit"])
    for row in tables["summary"]:
        log.info("bench: %s %s performance %.1f%% [%.1f, %.1f] scaling %.5f %%/token (s1's Scaling %.5f)", row["model"],
                 row["task"], row["performance"], row["performance_low"], row["performance_high"], row["scaling"],
                 row["s1_scaling"])
        if row["constant_answerer"]:
            log.warning("bench: %s answers %r to %.0f%% of the %s questions at its best limit; read its %.1f%% against "
                        "the majority-class baseline (%s%%), not against chance", row["model"], row["top_answer"],
                        row["top_answer_share"], row["task"], row["performance"], row["majority_baseline"])
    return {
        "generations": GENERATIONS, "results": RESULTS, "summary": SUMMARY, "summary_md": SUMMARY_MD,
        "figures": [p.name for name in (TIME_FIGURE, ACCURACY_FIGURE) for p in figures.outputs_of(Path(name))],
        "mode": bench.mode, "protocol": bench.protocol,
        "token_limits": limits, "grader": scoring.GRADER_VERSION, "regraded_rows": regraded,
        "summary_rows": [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
                         for r in tables["summary"]],
    }
