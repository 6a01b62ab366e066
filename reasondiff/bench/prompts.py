"""Benchmark questions: rows of gsm8k / MATH-500 / boolq -> chat prompts and gold references.

Every model sees the same user turn (a per-task template from config) rendered through its own
chat template, so base and tuned differ only in weights. boolq is asked with its passage when
the row has one (hub google/boolq) and without when it does not (the question-only slice).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from reasondiff.config.bench import BenchConfig, PromptTemplates, TaskData
from reasondiff.core.errors import UserError
from reasondiff.lm.data_sources import load_rows, require_fields
from reasondiff.lm.layouts import ReasoningLayout, layout_named

# task -> (field holding the question, field holding the gold reference)
TASK_FIELDS: dict[str, tuple[str, str]] = {
    "gsm8k": ("question", "answer"),
    "math500": ("problem", "answer"),
    "boolq": ("question", "answer"),
}


@dataclass(frozen=True)
class Question:
    task: str
    id: str
    """Stable within the dataset: MATH's `unique_id`, else the row index."""
    user_turn: str
    reference: Any
    """The gold field as `grading.grade` takes it (gsm8k answer text, MATH answer, boolq bool)."""
    question: str = ""
    """The row's question (MATH: problem) as is, for protocols with their own prompt (lm-eval)."""
    passage: str | None = None
    """boolq's passage, when the row has one."""


def user_turn(task: str, row: dict[str, Any], templates: PromptTemplates) -> str:
    """The task's template with the row's fields put in (finetune's samples use the same one)."""
    return templates.user_turn(task, row)


def select_indices(n_rows: int, limit: int | None, seed: int) -> list[int]:
    """A reproducible subset: the same seed gives the same questions for every model and run."""
    if limit is None or limit >= n_rows:
        return list(range(n_rows))
    return sorted(random.Random(seed).sample(range(n_rows), limit))


def load_questions(task: str, bench: BenchConfig) -> list[Question]:
    """The task's questions (seeded `bench.limit` subset), each row checked for its fields."""
    data: TaskData = bench.data[task]
    key = f"bench.data.{task}.path"
    dataset = load_rows(data.path, split=data.split, config_name=data.config_name, config_key=key,
                        fields=TASK_FIELDS[task])
    if len(dataset) == 0:
        raise UserError(f"{key}={data.path}: no rows")
    question_field, reference_field = TASK_FIELDS[task]
    questions = []
    for index in select_indices(len(dataset), bench.limit, bench.seed):
        row = dict(dataset[index])
        require_fields(row, (question_field, reference_field), index=index, source=f"{key}={data.path}")
        qid = str(row["unique_id"]) if task == "math500" and row.get("unique_id") else str(index)
        questions.append(Question(task=task, id=qid, user_turn=user_turn(task, row, bench.prompts),
                                  reference=row[reference_field], question=str(row[question_field]),
                                  passage=row.get("passage") or None))
    return questions


def chat_prompt(tokenizer, user: str, *, system_prompt: str | None, start_thinking: bool = False,
                layout: ReasoningLayout | None = None, plain: bool = False) -> str:
    """The full prompt text: the chat template with its generation prompt (or, `plain`, the bare
    user turn), optionally opening the thinking in `layout` (default: s1's). As in s1's evaluation
    no newline follows s1's `<|im_start|>think` (the model writes it); the think layout opens with
    `<think>\n` as R1's template does, and nothing is added when the template opened it already."""
    if plain:
        text = user
    else:
        messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
            {"role": "user", "content": user}]
        if not getattr(tokenizer, "chat_template", None):
            raise UserError("the model's tokenizer has no chat template; bench prompts go through it (use an "
                            "instruct/chat model, or list the model in bench.plain_prompt_models)")
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if start_thinking:
        text += (layout or layout_named("s1")).opening(text)
    return text


def prompt_ids(tokenizer, text: str) -> list[int]:
    """Token ids of a rendered prompt; the template already holds any BOS, so none is added twice."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])
