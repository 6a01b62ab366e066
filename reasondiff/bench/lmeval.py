"""lm-evaluation-harness's own protocols for gsm8k and boolq (`bench.protocol=lm_eval`), so the
bench's numbers can be set beside published lm-eval numbers. Re-implemented from lm-eval's task
YAMLs and code (v0.4.9.2 and 4e7e0d47), not imported: the harness would own the models and the
loop and would not give the per-limit prefixes.

gsm8k (`lm_eval/tasks/gsm8k/gsm8k.yaml`). The prompt is 5-shot `Question: {q}\\nAnswer: {full
train solution}\\n\\n` followed by `Question: {q}\\nAnswer:`, with no chat template. The shots are
drawn from the train split by one `random.Random(1234)` that advances doc by doc, so each test doc
gets its own shots. Generation is greedy and stops at "Question:", "</s>" or "<|im_end|>". Two
scores come out. strict-match is the first `#### N`. flexible-extract is the last number-like
token. Both are exact match once `,`, `$`, everything up to `#### ` and one trailing `.` are
removed from the prediction and the reference, compared case-insensitively.

boolq (`super_glue/boolq/default.yaml`). The context is `{passage}\\nQuestion: {question}?\\nAnswer:`,
and the answer is the continuation with the larger summed log-probability: " no" or " yes". There
is no generation, so the score is the same at every token limit.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from typing import Any

import torch

GSM8K_UNTIL = ("Question:", "</s>", "<|im_end|>")
STRICT_MATCH = re.compile(r"#### (\-?[0-9\.\,]+)")
FLEXIBLE_EXTRACT = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
REGEXES_TO_IGNORE = (",", "\\$", "(?s).*#### ", "\\.$")
INVALID = "[invalid]"
BOOLQ_CHOICES = ("no", "yes")
"""doc_to_choice: label 0 (False) is "no", 1 (True) is "yes"."""


# --- gsm8k -----------------------------------------------------------------------------------------

def gsm8k_doc_to_text(question: str) -> str:
    return f"Question: {question}\nAnswer:"


def gsm8k_fewshot_prompt(question: str, shots: Sequence[dict[str, Any]]) -> str:
    """Shots joined as `doc_to_text + " " + doc_to_target + "\\n\\n"`, then the question."""
    context = "".join(f"{gsm8k_doc_to_text(s['question'])} {s['answer']}\n\n" for s in shots)
    return context + gsm8k_doc_to_text(question)


def fewshot_draws(n_train: int, doc_indices: Sequence[int], k: int, seed: int) -> dict[int, list[int]]:
    """Train indices of the shots of each test doc, as lm-eval draws them on the full test set: one
    `random.Random(seed)`, `sample(train_docs, k)` per doc in dataset order (random.sample picks
    by position, so sampling range(n_train) gives the same indices as sampling the docs)."""
    rng = random.Random(seed)
    wanted = set(doc_indices)
    draws = {}
    for doc in range(max(doc_indices, default=-1) + 1):
        sample = rng.sample(range(n_train), k)
        if doc in wanted:
            draws[doc] = sample
    return draws


def cut_at_stop(text: str, until: Sequence[str] = GSM8K_UNTIL) -> tuple[str, bool]:
    """lm-eval's post-processing: the text before the first stop string; whether one occurred."""
    stopped = False
    for term in until:
        if term and term in text:
            text, stopped = text.split(term)[0], True
    return text, stopped


def regex_filter(response: str, regex: re.Pattern[str], group_select: int) -> str:
    """lm-eval's RegexFilter: findall, pick `group_select`, first non-empty group, strip; else [invalid]."""
    matches = regex.findall(response)
    if not matches:
        return INVALID
    match = matches[group_select]
    if isinstance(match, tuple):
        groups = [m for m in match if m]
        match = groups[0] if groups else INVALID
    return match.strip()


def exact_match(prediction: str, reference: str) -> bool:
    """exact_match_hf_evaluate with gsm8k's regexes_to_ignore (in order) and ignore_case=True."""
    for pattern in REGEXES_TO_IGNORE:
        prediction, reference = re.sub(pattern, "", prediction), re.sub(pattern, "", reference)
    return prediction.lower() == reference.lower()


def gsm8k_scores(completion: str, reference: str) -> dict[str, Any]:
    """strict-match and flexible-extract of a completion against the gold `answer` field."""
    text, stopped = cut_at_stop(completion)
    strict = regex_filter(text, STRICT_MATCH, 0)
    flexible = regex_filter(text, FLEXIBLE_EXTRACT, -1)
    return {"text": text, "stopped": stopped, "strict_answer": strict, "flexible_answer": flexible,
            "strict_match": exact_match(strict, str(reference)),
            "flexible_extract": exact_match(flexible, str(reference))}


# --- boolq -----------------------------------------------------------------------------------------

def boolq_context(question: str, passage: str | None) -> str:
    """doc_to_text; rows without a passage (the question-only slice) drop its line."""
    question = question.strip().rstrip("?")
    return f"{passage.strip()}\nQuestion: {question}?\nAnswer:" if passage else f"Question: {question}?\nAnswer:"


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """TemplateLM._encode_pair: trailing spaces move onto the continuation, whose tokens are those
    of context + continuation past the context's own."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation, context = context[-n_spaces:] + continuation, context[:-n_spaces]
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    return list(context_ids), list(whole[len(context_ids):])


@torch.inference_mode()
def loglikelihood(model, context_ids: Sequence[int], continuation_ids: Sequence[int]) -> float:
    """Summed log-probability of the continuation after the context (lm-eval's unnormalised score)."""
    ids = torch.tensor([list(context_ids) + list(continuation_ids)], device=next(model.parameters()).device)
    logits = model(input_ids=ids[:, :-1]).logits.float()
    logprobs = torch.log_softmax(logits[0, len(context_ids) - 1:], dim=-1)
    targets = ids[0, len(context_ids):]
    return float(logprobs.gather(1, targets[:, None]).sum())


def boolq_choice(model, tokenizer, context: str) -> tuple[str, list[float]]:
    """("yes" or "no", [ll(" no"), ll(" yes")]): acc takes the argmax (ties go to "no", as argmax does)."""
    scores = [loglikelihood(model, *encode_pair(tokenizer, context, f" {choice}")) for choice in BOOLQ_CHOICES]
    return BOOLQ_CHOICES[max(range(len(scores)), key=lambda k: (scores[k], -k))], scores
