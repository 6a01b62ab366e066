"""Grading: which answer a completion gives, and whether it matches the dataset's gold answer.

Finding the answer is policy, written here by hand, in two steps (docs/bench.md has the policy as
a table of examples; tests/test_bench_grading.py checks every row of it):

1. **The answer region.** A completion in the s1 layout (its thinking was opened, by the prompt or
   by the model writing `<|im_start|>think`, or it holds the answer delimiter) answers only after
   its last answer delimiter `<|im_start|>answer`, which is how s1's own scorer reads it. If the
   delimiter never came, the thinking is all it said, and it is read as s1's scorer falls back to
   reading it. Any other completion is its own region.
   **A prefix the limit cut** is read by one rule for every model (`truncation_rule`): only what
   it has written explicitly counts (step 2's box or marker, never a bare last number), and the
   word running into the cut does not. So a base model's reply cut after an intermediate
   `\\boxed{}` and a tuned model's thinking cut after one are read alike. The other rule, a cut
   prefix has not answered at all (`finished_only`), is reported beside it as a sensitivity.
2. **The final answer in the region.** Take the last closed `\\boxed{}`. Otherwise take the value
   right after the last explicit marker that is followed by one: `Answer:`, `Final Answer:`,
   "The (final) answer is", `####`, and their bold and heading variants; a value stated in prose
   after the marker is read from the sentence's last inline math (`Answer: the sum is $\\frac{7}{2}$.`,
   never a bare number in prose). Otherwise, **only when
   the model finished**, take the last number of the region (gsm8k) or its last yes/no (boolq).
   "Finished" means the model emitted its end of turn within the limit. The bench knows this; the
   text cannot tell it, so it is passed in. MATH has no such fallback, because its prompt asks for
   a box.

Reading the chosen span is math-verify's job: `\\boxed{1{,}000}`, `3\\frac{1}{2}`, `\\$18` and
`18 \\text{ apples}` are all its work. math-verify's own anchors are not used to choose the span.
It ranks "final answer is" above "answer:", and it reads `Answer: Natalia sold 48 clips in April
and 24 in May. In total she sold 72.` as 48, the first number within 50 characters of "answer".
That is the intermediate-number misreading this module exists to avoid. Without an anchor it
also takes the last number of any text, cut-off reasoning included. Before math-verify reads a
span, `normalize` fixes what it misreads: `1\\,000` (which it reads as 1*0), a unicode minus sign
(which it reads as nothing), and `-$5`.

The comparison is math-verify's `verify`, with the gold answer first because `verify` is not
symmetric. The gsm8k gold number is parsed as a plain expression (as its README advises), the
MATH gold answer as LaTeX. Its `signal.alarm` timeouts raise in any thread but the main one, so
they are switched off here (`parsing_timeout=None`, `timeout_seconds=None`). Overlong answers are
refused up front instead.
"""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass
from typing import Any

TASKS = ("gsm8k", "math500", "boolq")
DEFAULT_THINK_DELIMITER = "<|im_start|>think"
DEFAULT_ANSWER_DELIMITER = "<|im_start|>answer"
MAX_MATH_ANSWER_CHARS = 1000
"""Longer 'answers' are runaway text; SymPy on them can take minutes and no timeout guards it."""

SOURCES = ("box", "marker", "last_number", "last_verdict", "unfinished", "none")
"""Where an extraction came from (the first four) or why there is none (the last two)."""
TRUNCATION_RULES = ("written_so_far", "finished_only")
"""How a prefix cut by the limit is read, the same for every model (`truncation_rule`). The bench
grades by the first and reports the second as a sensitivity (docs/bench.md)."""


class _DropTimeoutDisabledWarning(logging.Filter):
    """math-verify warns on every process that timeouts are off; here that is deliberate."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout is disabled")


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_DropTimeoutDisabledWarning())


@dataclass(frozen=True)
class Extraction:
    answer: str | None
    """The final answer as written (normalised): box content, the value after a marker, the last
    number; for boolq "yes" or "no". None = no answer."""
    source: str
    """One of SOURCES: box, marker, last_number, last_verdict; or unfinished (cut by the limit, read
    under the finished_only rule) or none (nothing explicit, or only a bare number in cut-off text)."""


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")


# --- normalisation: what math-verify misreads ------------------------------------------------------

_MINUS_SIGNS = re.compile("[\u2212\ufe63\uff0d]")  # minus sign, small and fullwidth hyphen-minus
_DIGIT_GROUP_SEPARATOR = re.compile(
    r"(?<=\d)(?:\{,\}|,\\!|\\,|\\!|\\ |\\thinspace ?|~|[\u2009\u202f\u00a0])(?=\d{3}(?!\d))")
_MINUS_CURRENCY = re.compile(r"-\s*\\?\$\s*(?=\d)")


def normalize(text: str) -> str:
    """Rewrite the number spellings math-verify misreads, leaving everything else alone: a unicode
    minus sign becomes `-`, LaTeX and unicode digit-group separators (`1\\,000`, `1{,}000`,
    `10,\\!000`, thin spaces) are dropped, and a currency sign after a minus sign (`-$5`) is dropped."""
    text = _MINUS_SIGNS.sub("-", text)
    text = _DIGIT_GROUP_SEPARATOR.sub("", text)
    return _MINUS_CURRENCY.sub("-", text)


# --- step 1: the answer region ---------------------------------------------------------------------

def in_s1_layout(completion: str, *, thinking_opened: bool = False, think_delimiter: str | None = DEFAULT_THINK_DELIMITER,
                 answer_delimiter: str | None = DEFAULT_ANSWER_DELIMITER) -> bool:
    """Whether the completion is in the s1 layout: the prompt opened the thinking, or the model
    wrote the thinking or answer delimiter. Each delimiter starts with a special token that only a
    model trained on the layout writes."""
    return thinking_opened or any(d and d in completion for d in (think_delimiter, answer_delimiter))


def answer_region(completion: str, *, thinking_opened: bool = False,
                  think_delimiter: str | None = DEFAULT_THINK_DELIMITER,
                  answer_delimiter: str | None = DEFAULT_ANSWER_DELIMITER) -> str:
    """The text that can hold the answer. In the s1 layout it is the text after the last answer
    delimiter; if the delimiter never came, it is the thinking, which is what s1's scorer falls back
    to (split on `<|im_start|>`, drop the first line). Any other completion is its own region.
    Whether a region cut by the limit may answer is `truncation_rule`'s business, not this one's."""
    if not in_s1_layout(completion, thinking_opened=thinking_opened, think_delimiter=think_delimiter,
                        answer_delimiter=answer_delimiter):
        return completion
    if answer_delimiter and answer_delimiter in completion:
        return completion[completion.rindex(answer_delimiter) + len(answer_delimiter):]
    if think_delimiter and think_delimiter in completion:
        return completion[completion.rindex(think_delimiter) + len(think_delimiter):]
    return completion


_CUT_TAIL = re.compile(r"[\w.,]+\Z")
"""A word or number running into the cut of an unfinished region: `72` may be the start of `720`,
`no` of `not sure`, so it is not read."""


def truncation_rule(region: str, *, finished: bool, rule: str = TRUNCATION_RULES[0]) -> str | None:
    """What a region may answer from once the limit has cut it: one rule for every model, whatever
    its layout (issue 26.4: a base reply cut after an intermediate `\\boxed{}` was read, a tuned
    model's thinking cut after one was not).

    - `written_so_far` (the bench's rule): the text it has written, minus a word or number running
      into the cut (`72` may be the start of `720`, `no` of `not sure`). `extract` then reads only
      explicit answers (a box, a marker) from it: a bare last number is no answer until finished.
      This is how s1's scorer reads a cut thinking, and what budget forcing's closing asks for.
    - `finished_only` (the sensitivity): a prefix the limit cut has not answered (None).

    A finished region is returned as it is under both rules."""
    if rule not in TRUNCATION_RULES:
        raise ValueError(f"unknown truncation rule {rule!r}; choose from {', '.join(TRUNCATION_RULES)}")
    if finished:
        return region
    if rule == "finished_only":
        return None
    return _CUT_TAIL.sub("", region)


# --- step 2: the final answer in the region --------------------------------------------------------

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")


def last_boxed(text: str) -> str | None:
    """Content of the last closed `\\boxed{...}` (balanced braces), or None. A box left unclosed
    (cut off by the token limit) is no answer, though an earlier closed box still is."""
    for match in reversed(list(_BOXED.finditer(text))):
        depth, start = 1, match.end()
        for pos in range(start, len(text)):
            if text[pos] == "{":
                depth += 1
            elif text[pos] == "}":
                depth -= 1
                if depth == 0:
                    return text[start:pos].strip()
    return None


_MARKER = re.compile(
    r"^[ \t]*#{1,6}[ \t]*(?:\*\*)?(?:final[ \t]+)?answer(?:\*\*)?[ \t]*:?[ \t]*$"  # a "### Final Answer" heading
    r"|####"                                                                       # gsm8k's own
    r"|\b(?:final\s+)?answer\s*(?:\*\*|__)?\s*:"                                   # (**)(Final) Answer(**):
    r"|\b(?:final\s+)?answer\s+is\b",                                              # the (final) answer is
    re.IGNORECASE | re.MULTILINE)
_MARKUP = re.compile(r"^[\s*_:]+")
_SENTENCE_END = re.compile(r"\n|[.!?;](?=\s|$)")
_MATH_ENV = re.compile(r"\$\$.+?\$\$|\$[^$\n]+?\$|\\\(.+?\\\)|\\\[.+?\\\]", re.DOTALL)
_NUMBER = r"-?\s*(?:\\?\$\s*)?(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
_FRACTION = r"\\[dt]?frac\s*(?:\{\s*-?\d+\s*\}|\d)\s*(?:\{\s*\d+\s*\}|\d)"
_GSM8K_VALUE = re.compile(rf"(?:\\?\$\s*)?(?:{_NUMBER}(?:\s*{_FRACTION})?|-?{_FRACTION})")
"""A number as gsm8k answers write it: `$1,000`, `-5`, `18.50`, a mixed number `3\\frac{1}{2}`."""
_ANY_GSM8K_VALUE = re.compile(rf"{_MATH_ENV.pattern}|(?<![\w.]){_GSM8K_VALUE.pattern}", re.DOTALL)
_EXPRESSION = re.compile(r"(?:[\d\s.,+\-*/×÷()^$={}]|\\[A-Za-z]+|(?<![A-Za-z])[A-Za-z](?![A-Za-z]))*")
"""Arithmetic, LaTeX commands and one-letter variables, no words: what may stand before an `=`."""
_PROSE = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{2,}\s+[A-Za-z]{2,}\b")
_VERDICT = re.compile(r"(?:(?P<negation>\bnot|n't)\s+)?\b(?P<word>yes|no|true|false)\b", re.IGNORECASE)
_VERDICT_AFTER_NO = {"because", "since", "as", "it", "this", "that", "there"}
"""Words that may follow a verdict "no"; any other word makes it a determiner ("no doubt", "no one")."""


def _first_sentence(text: str) -> str:
    end = _SENTENCE_END.search(text)
    return text[:end.start()] if end else text


def _gsm8k_token(token: str) -> str:
    """`$ -1,000,` -> `-1,000`: currency signs, inner spaces and a trailing comma go."""
    return re.sub(r"\\?\$|\s+", "", token).rstrip(",")


def _leading_value(task: str, text: str) -> str | None:
    """The value a marker is followed by, or None when prose follows it instead (`Answer: Natalia
    sold 48 clips ...` states no value; `#### Step 1:` is a heading, not an answer)."""
    text = _MARKUP.sub("", text)
    if task == "boolq":
        return verdict(_first_sentence(text))
    if task == "math500":
        env = _MATH_ENV.match(text)
        if env:
            return env.group(0)
        sentence = _first_sentence_of_math(text).strip()
        if sentence and not _PROSE.search(sentence):
            return sentence
        return _inline_math_after_prose(sentence)
    sentence = _first_sentence_of_math(text)
    if "=" in sentence and _EXPRESSION.fullmatch(sentence.rsplit("=", 1)[0]):
        sentence = sentence.rsplit("=", 1)[1].lstrip()  # "Answer: 3 * 24 = 72", "x = 18": the result
    number = _GSM8K_VALUE.match(sentence)
    if number:
        return _gsm8k_token(number.group(0))
    env = _MATH_ENV.match(sentence)
    return env.group(0) if env else _inline_math_after_prose(sentence)


def _first_sentence_of_math(text: str) -> str:
    """The first sentence, never ending inside a math span (`$x = 1. y$` is one span)."""
    spans = [m.span() for m in _MATH_ENV.finditer(text)]
    for end in _SENTENCE_END.finditer(text):
        if not any(lo < end.start() < hi for lo, hi in spans):
            return text[:end.start()]
    return text


def _inline_math_after_prose(sentence: str) -> str | None:
    """The last inline math span of a sentence that states its value in prose (`Answer: the sum is
    $\\frac{7}{2}$.`): the prose names the value, the math is it. A span whose content starts or
    ends with a space is two currency amounts (`$18 and $`), not math."""
    spans = [m.group(0) for m in _MATH_ENV.finditer(sentence)]
    spans = [s for s in spans if s.startswith("$$") or s[1:-1] == s[1:-1].strip()]
    return spans[-1] if spans else None


def value_after_last_marker(task: str, region: str) -> str | None:
    """The value after the last explicit marker that is followed by one."""
    for marker in reversed(list(_MARKER.finditer(region))):
        value = _leading_value(task, region[marker.end():])
        if value:
            return value
    return None


def verdict(text: str) -> str | None:
    """The last yes/no of `text`, as "yes" or "no": true/false count, a negation flips them ("not
    true" = no, "isn't false" = yes), and a "no" that is a determiner ("no doubt") is not one."""
    found = None
    for match in _VERDICT.finditer(text):
        word = match.group("word").lower()
        if word == "no":
            following = re.match(r"\s+([A-Za-z]+)", text[match.end():])
            if following and following.group(1).lower() not in _VERDICT_AFTER_NO:
                continue
        if word in ("true", "false"):
            word = "yes" if (word == "true") != bool(match.group("negation")) else "no"
        found = word
    return found


def last_number(region: str) -> str | None:
    """The last number (or math span) of the region: the answer of a finished gsm8k reply that
    states it without a marker ("... In total she sold 72.")."""
    tokens = list(_ANY_GSM8K_VALUE.finditer(region))
    if not tokens:
        return None
    token = tokens[-1].group(0)
    return token if token.startswith(("$", "\\(", "\\[")) and _MATH_ENV.fullmatch(token) else _gsm8k_token(token)


def extract(task: str, completion: Any, *, finished: bool = True, thinking_opened: bool = False,
            think_delimiter: str | None = DEFAULT_THINK_DELIMITER,
            answer_delimiter: str | None = DEFAULT_ANSWER_DELIMITER,
            truncation: str = TRUNCATION_RULES[0]) -> Extraction:
    """The final answer of `completion` and where it was found (see the module docstring).

    `finished`: the model emitted its end of turn within the limit (the bench passes False for a
    prefix cut off by the limit). `thinking_opened`: the prompt already opened the thinking
    (`<|im_start|>think` appended to the prompt, as s1's evaluation does). `truncation`: how a cut
    prefix is read (`truncation_rule`)."""
    _check_task(task)
    if not isinstance(completion, str):
        return Extraction(None, "none")
    region = truncation_rule(normalize(answer_region(completion, thinking_opened=thinking_opened,
                                                     think_delimiter=think_delimiter,
                                                     answer_delimiter=answer_delimiter)),
                             finished=finished, rule=truncation)
    if region is None:
        return Extraction(None, "unfinished")
    boxed = last_boxed(region)
    if boxed is not None:
        answer = verdict(boxed) if task == "boolq" else boxed
        return Extraction(answer or None, "box" if answer else "none")
    value = value_after_last_marker(task, region)
    if value is not None:
        return Extraction(value, "marker")
    if finished and task == "gsm8k":
        number = last_number(region)
        if number:
            return Extraction(number, "last_number")
    if finished and task == "boolq":
        word = verdict(region)
        if word:
            return Extraction(word, "last_verdict")
    return Extraction(None, "none")


def extract_answer(task: str, completion: Any, *, finished: bool = True, thinking_opened: bool = False,
                   think_delimiter: str | None = DEFAULT_THINK_DELIMITER,
                   answer_delimiter: str | None = DEFAULT_ANSWER_DELIMITER) -> str | None:
    """The final answer of `completion` as text, or None when it gives none (see `extract`)."""
    return extract(task, completion, finished=finished, thinking_opened=thinking_opened,
                   think_delimiter=think_delimiter, answer_delimiter=answer_delimiter).answer


# --- comparison with the gold answer ---------------------------------------------------------------

def _as_latex(answer: str) -> str:
    """math-verify's LaTeX extraction looks for math mode: wrap a bare answer in `$...$`."""
    answer = answer.strip()
    if answer.startswith(("$", "\\(", "\\[")):
        return answer
    return f"${answer}$"


@functools.lru_cache(maxsize=8192)
def _parse_latex(text: str) -> tuple:
    from math_verify import parse

    return tuple(parse(_as_latex(text), parsing_timeout=None))


@functools.lru_cache(maxsize=8192)
def _parse_number(text: str) -> tuple:
    from math_verify import ExprExtractionConfig, parse

    return tuple(parse(text, extraction_config=[ExprExtractionConfig()], parsing_timeout=None))


def _verify(gold: tuple, predicted: tuple) -> bool:
    from math_verify import verify

    if not gold or not predicted:
        return False
    return bool(verify(list(gold), list(predicted), timeout_seconds=None))


def gsm8k_reference(reference: Any) -> str | None:
    """The gold number of a gsm8k `answer` field (the worked solution ending `#### N`) or a bare number."""
    text = normalize(str(reference))
    if "####" in text:
        text = text.rsplit("####", 1)[1]
    number = _GSM8K_VALUE.search(text)
    return _gsm8k_token(number.group(0)) if number else None


def boolq_reference(reference: Any) -> bool | None:
    if isinstance(reference, bool):
        return reference
    word = str(reference).strip().lower()
    return True if word in ("yes", "true") else False if word in ("no", "false") else None


def math_equivalent(gold: str, predicted: str) -> bool:
    """LaTeX equivalence by math-verify (gold first); False on anything it cannot parse."""
    if not gold or not predicted or len(predicted) > MAX_MATH_ANSWER_CHARS:
        return False
    try:
        return _verify(_parse_latex(normalize(gold)), _parse_latex(normalize(predicted)))
    except Exception:  # noqa: BLE001 - grading garbage must never stop a sweep
        return False


def gsm8k_equal(gold_reference: Any, predicted: str) -> bool:
    """The predicted number equals the gold one. gsm8k golds are bare numbers in the question's
    unit, so a trailing `%` or `.` on the prediction is dropped rather than read as /100."""
    gold = gsm8k_reference(gold_reference)
    if gold is None or not predicted or len(predicted) > MAX_MATH_ANSWER_CHARS:
        return False
    predicted = re.sub(r"\s*\\?%\s*$", "", predicted.strip()).rstrip(".").strip()
    try:
        return _verify(_parse_number(gold), _parse_latex(normalize(predicted)))
    except Exception:  # noqa: BLE001
        return False


def grade_extracted(task: str, answer: str | None, reference: Any) -> bool:
    """Whether an already-extracted answer matches the gold field (None = no answer = wrong)."""
    _check_task(task)
    if answer is None:
        return False
    try:
        if task == "gsm8k":
            return gsm8k_equal(reference, answer)
        if task == "boolq":
            gold = boolq_reference(reference)
            return gold is not None and answer in ("yes", "no") and (answer == "yes") == gold
        return math_equivalent(str(reference), answer)
    except Exception:  # noqa: BLE001
        return False


def grade(task: str, completion: Any, reference: Any, *, finished: bool = True, thinking_opened: bool = False,
          think_delimiter: str | None = DEFAULT_THINK_DELIMITER,
          answer_delimiter: str | None = DEFAULT_ANSWER_DELIMITER) -> bool:
    """True when `completion`'s final answer matches `reference`, the dataset row's gold field: the
    gsm8k `answer` text, the MATH `answer` string or the boolq bool. A whole completion is graded as
    finished (the default). The bench passes `finished=False` for a prefix cut off by the limit.
    Never raises on a garbage completion; it returns False."""
    _check_task(task)
    try:
        answer = extract_answer(task, completion, finished=finished, thinking_opened=thinking_opened,
                                think_delimiter=think_delimiter, answer_delimiter=answer_delimiter)
    except Exception:  # noqa: BLE001
        return False
    return grade_extracted(task, answer, reference)
