"""What an accuracy is read against: the answer a model gives most often, and the majority-class
baseline of the same questions (issue 26.2).

The v2 write-up's base model answered "no" to all 50 boolq questions: its 34% was the share of
False labels, and always answering "yes" would have scored 66%. A table that shows the accuracy
alone hides that; results.csv and summary.csv show these beside it (tables.py), summary.md says it
in words, and analyze's report flags it.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

from reasondiff.bench import grading

CONSTANT_ANSWER_SHARE = 50.0
"""A model whose most common answer covers more than this share (%) of the questions is flagged
(`constant_answerer`): its accuracy is then mostly the share of that answer among the gold labels."""


def answer_key(answer: Any) -> str | None:
    """An answer as counted in the answer distribution: spaces, `$` and digit-group commas dropped,
    trailing zeros of a decimal dropped, lower case (`$1,000.00` and `1000` count as one answer).
    None for no answer."""
    if answer is None or str(answer).strip() == "":
        return None
    key = re.sub(r"\s+|\\?\$", "", str(answer)).lower().rstrip(".")
    number = key.replace(",", "")
    if re.fullmatch(r"-?\d+(\.\d+)?", number):
        key = number.rstrip("0").rstrip(".") if "." in number else number
    return key


def gold_answer(task: str, reference: Any) -> str | None:
    """The gold answer of a row as an answer key: the number after gsm8k's `####`, boolq's label as
    yes/no, MATH's answer string."""
    if reference is None:
        return None
    if task == "gsm8k":
        return answer_key(grading.gsm8k_reference(reference))
    if task == "boolq":
        label = grading.boolq_reference(reference)
        return None if label is None else ("yes" if label else "no")
    return answer_key(reference)


def most_common(counts: Counter) -> tuple[str, int]:
    """The most frequent key, a tie going to the smallest key: the same answer whatever order the
    rows were written in (batches sorted by length, or gathered from torchrun ranks)."""
    top = max(counts.values())
    return min(key for key, count in counts.items() if count == top), top


def top_answer(answers: Sequence[Any]) -> tuple[str, float]:
    """(most common answer, its share of all the replies in %), no answer counting in the total but
    never as the top answer; ("", 0.0) when no reply answers."""
    counts = Counter(key for key in map(answer_key, answers) if key is not None)
    if not counts or not answers:
        return "", 0.0
    key, count = most_common(counts)
    return key, 100.0 * count / len(answers)


def majority_baseline(task: str, references: Sequence[Any]) -> tuple[str, float]:
    """(most common gold answer, accuracy in % of always giving it) on these questions. For boolq
    it is the majority class; for open-answer tasks (gsm8k, MATH) the most common gold number or
    expression, which few questions share, so the baseline is near 0. ("", nan) without golds."""
    golds = [gold_answer(task, reference) for reference in references]
    counts = Counter(g for g in golds if g is not None)
    if not counts:
        return "", math.nan
    key, count = most_common(counts)
    return key, 100.0 * count / len(golds)
