"""FROZEN COPY of the bench grader as it was before issue 13 (commit 0e83183,
reasondiff/bench/grading.py), kept ONLY so that `python -m reasondiff.bench.regrade` can count how
many verdicts the current grader (grading.py) changes on an existing generations.jsonl, and so that
the policy table in docs/bench.md can state which examples the old grader got wrong (tested).

Never grade with it: it reads the first sentence after the last `Answer:` anywhere (thinking
included), lets a `\\boxed{}` written while thinking beat the answer section, misses "The final
answer is 18.", and scores cut-off text. Do not edit it either: it is a record.
"""
# ruff: noqa

from __future__ import annotations

import logging
import re
from fractions import Fraction
from typing import Any

TASKS = ("gsm8k", "math500", "boolq")
DEFAULT_ANSWER_DELIMITER = "<|im_start|>answer"
MAX_MATH_ANSWER_CHARS = 1000
"""Longer 'answers' are runaway text; SymPy on them can take minutes and no timeout guards it."""

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER_MARKER = re.compile(r"(?:####|\banswer\s*:)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")
_LATEX_FRACTION = re.compile(r"\\[dt]?frac\s*\{\s*(-?\d+)\s*\}\s*\{\s*(\d+)\s*\}")
_SENTENCE_END = re.compile(r"\.(?:\s|$)")
_YES_NO = re.compile(r"\b(yes|no|true|false)\b", re.IGNORECASE)
_TRUE_WORDS = {"yes", "true"}


class _DropTimeoutDisabledWarning(logging.Filter):
    """math-verify warns on every process that timeouts are off; here that is deliberate."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout is disabled")


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_DropTimeoutDisabledWarning())


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` (balanced braces), or None; an unclosed box is no answer."""
    matches = list(_BOXED.finditer(text))
    for match in reversed(matches):
        depth, start = 1, match.end()
        for pos in range(start, len(text)):
            if text[pos] == "{":
                depth += 1
            elif text[pos] == "}":
                depth -= 1
                if depth == 0:
                    return text[start:pos].strip()
        # unclosed (cut off by the token limit): an earlier, closed box may still be the answer
    return None


def _after_last_marker(text: str, answer_delimiter: str | None) -> str | None:
    """The first line of text after the last explicit answer marker, or None if there is none."""
    ends = [m.end() for m in _ANSWER_MARKER.finditer(text)]
    if answer_delimiter and answer_delimiter in text:
        ends.append(text.rindex(answer_delimiter) + len(answer_delimiter))
    if not ends:
        return None
    rest = text[max(ends):]
    # `Final Answer:` right after the delimiter, or an answer on the next line: skip to the content
    rest = _ANSWER_MARKER.sub("", rest.lstrip(), count=1) if _ANSWER_MARKER.match(rest.lstrip()) else rest
    for line in rest.splitlines():
        if line.strip():
            return _first_sentence(line.strip())
    return None


def _first_sentence(text: str) -> str:
    """`$64$. The cold train ...` -> `$64$`: an answer line ends at its first full stop (a decimal
    point is followed by a digit, so `3.5` stays whole); math mode `$...$` is kept intact."""
    if text.startswith("$"):
        close = text.find("$$", 2) + 2 if text.startswith("$$") else text.find("$", 1) + 1
        if close > 1:
            return text[:close]
    match = _SENTENCE_END.search(text)
    return text[:match.start()].strip() if match else text


def extract_answer(task: str, completion: str, *, answer_delimiter: str | None = DEFAULT_ANSWER_DELIMITER) -> str | None:
    """The explicit final answer in `completion` as text, or None when it states none.

    Math: the last closed `\\boxed{}`, else the rest of the line after the last `####` /
    `Answer:` / answer delimiter (for gsm8k reduced to its last number). boolq: yes/no/true/false
    from the box or after a marker, or as the completion's first word (a direct reply).
    """
    _check_task(task)
    if not isinstance(completion, str):
        return None
    boxed = last_boxed(completion)
    segment = boxed if boxed is not None else _after_last_marker(completion, answer_delimiter)
    if task == "boolq":
        if segment is None:
            first = completion.strip().split(maxsplit=1)
            segment = first[0] if first else ""
            match = _YES_NO.fullmatch(segment.strip(".,!:;*\"'()"))
        else:
            match = _YES_NO.search(segment)
        return match.group(1).lower() if match else None
    if segment is None:
        return None
    if task == "gsm8k":
        numbers = _NUMBER.findall(_LATEX_FRACTION.sub(r"\1/\2", segment))
        return _normalize_number(numbers[-1]) if numbers else None
    segment = segment.strip().rstrip(".").strip()
    return segment or None


def _normalize_number(text: str) -> str:
    """'1,000' -> '1000', '18.50' -> '18.5', '8/6' -> '4/3' (exact, via Fraction)."""
    value = _to_fraction(text)
    if value is None or value.denominator == 1:
        return text if value is None else str(value.numerator)
    decimal = repr(float(value))
    return decimal if Fraction(decimal) == value else str(value)


def _to_fraction(text: str) -> Fraction | None:
    cleaned = text.replace(",", "").replace("$", "").strip().rstrip(".")
    try:
        return Fraction(cleaned)
    except (ValueError, ZeroDivisionError):
        return None


def gsm8k_reference(reference: Any) -> Fraction | None:
    """The number of a gsm8k gold field: the `answer` text ending in `#### N`, or a bare number."""
    text = str(reference)
    if "####" in text:
        text = text.rsplit("####", 1)[1]
    numbers = _NUMBER.findall(text)
    return _to_fraction(numbers[-1]) if numbers else None


def boolq_reference(reference: Any) -> bool | None:
    if isinstance(reference, bool):
        return reference
    word = str(reference).strip().lower()
    return True if word in _TRUE_WORDS else False if word in {"no", "false"} else None


def _as_latex(answer: str) -> str:
    """math-verify's LaTeX extraction looks for math mode: wrap a bare answer in `$...$`."""
    answer = answer.strip()
    if answer.startswith("$") or answer.startswith("\\(") or answer.startswith("\\["):
        return answer
    return f"${answer}$"


def math_equivalent(gold: str, predicted: str) -> bool:
    """LaTeX equivalence by math-verify (gold first); False on anything it cannot parse."""
    if not gold or not predicted or len(predicted) > MAX_MATH_ANSWER_CHARS:
        return False
    from math_verify import parse, verify

    try:
        gold_parsed = parse(_as_latex(gold), parsing_timeout=None)
        predicted_parsed = parse(_as_latex(predicted), parsing_timeout=None)
        if not gold_parsed or not predicted_parsed:
            return False
        return bool(verify(gold_parsed, predicted_parsed, timeout_seconds=None))
    except Exception:  # noqa: BLE001 - grading garbage must never stop a sweep
        return False


def grade_extracted(task: str, answer: str | None, reference: Any) -> bool:
    """Whether an already-extracted answer matches the gold field (None = no answer = wrong)."""
    _check_task(task)
    if answer is None:
        return False
    try:
        if task == "gsm8k":
            gold, predicted = gsm8k_reference(reference), _to_fraction(answer)
            return gold is not None and predicted is not None and gold == predicted
        if task == "boolq":
            gold = boolq_reference(reference)
            return gold is not None and (answer.lower() in _TRUE_WORDS) == gold
        return math_equivalent(str(reference), answer)
    except Exception:  # noqa: BLE001
        return False


def grade(task: str, completion: str, reference: Any, *,
          answer_delimiter: str | None = DEFAULT_ANSWER_DELIMITER) -> bool:
    """True when `completion`'s explicit final answer matches `reference` (the dataset row's gold
    field: the gsm8k `answer` text, the MATH `answer` string, the boolq bool). Never raises on
    garbage completions; returns False."""
    _check_task(task)
    try:
        answer = extract_answer(task, completion, answer_delimiter=answer_delimiter)
    except Exception:  # noqa: BLE001
        return False
    return grade_extracted(task, answer, reference)
