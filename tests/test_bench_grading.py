"""Grading: the policy table of docs/bench.md row by row, the real gold solutions, math-verify's
equivalence, boolq verdicts, and garbage that must never raise.

The real-data tests matter most. Every gold gsm8k / MATH-500 solution must grade correct against
its own answer, and a perturbed answer must grade wrong. A mismatched antlr runtime, or a wrong
math-verify call, makes parsing fail silently and every answer read as wrong.
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from reasondiff.bench import legacy_grading
from reasondiff.bench.grading import (
    _BOXED,
    TRUNCATION_RULES,
    answer_region,
    extract,
    extract_answer,
    grade,
    last_boxed,
    normalize,
    truncation_rule,
    verdict,
)

DOCS = Path(__file__).resolve().parent.parent / "docs" / "bench.md"


# --- the policy table of docs/bench.md --------------------------------------------------------------

def _cells(line: str) -> list[str]:
    """A markdown table row's cells: split on unescaped pipes, then `\\|` -> `|`, code spans unwrapped."""
    cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
    return [c[1:-1] if len(c) >= 2 and c.startswith("`") and c.endswith("`") else c for c in cells]


def policy_rows() -> list[dict]:
    lines = DOCS.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| # | task | completion"))
    header = _cells(lines[start])
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, _cells(line), strict=True)))
    return rows


def _reference(task: str, gold: str):
    return f"#### {gold}" if task == "gsm8k" else (gold == "yes") if task == "boolq" else gold


POLICY = policy_rows()


def test_the_policy_table_is_there_and_covers_every_task_and_source():
    assert len(POLICY) >= 40
    assert {r["task"] for r in POLICY} == {"gsm8k", "math500", "boolq"}
    sources = {extract(r["task"], r["completion (⏎ = newline)"].replace("⏎", "\n"), finished=r["finished"] == "yes").source
               for r in POLICY}
    assert sources == {"box", "marker", "last_number", "last_verdict", "none"}
    assert any(r["old grader"] != r["verdict"] for r in POLICY)


@pytest.mark.parametrize("row", POLICY, ids=[f"row{r['#']}" for r in POLICY])
def test_policy_table_row(row):
    """Each row of docs/bench.md's table: the extracted answer, the verdict, and the old grader's verdict."""
    task, finished = row["task"], row["finished"] == "yes"
    completion = row["completion (⏎ = newline)"].replace("⏎", "\n")
    reference = _reference(task, row["gold"])
    expected_answer = None if row["answer"] == "—" else row["answer"]
    assert extract_answer(task, completion, finished=finished) == expected_answer
    assert grade(task, completion, reference, finished=finished) is (row["verdict"] == "✓")
    assert legacy_grading.grade(task, completion, reference) is row["old grader"].startswith("✓")


def test_math_verify_alone_reads_the_intermediate_number_which_is_why_the_span_is_chosen_by_hand():
    from math_verify import parse

    section = "Answer: Natalia sold 48 clips in April and 24 in May. In total she sold 72."
    assert str(parse(section, parsing_timeout=None)[0]) == "48"
    assert extract_answer("gsm8k", section) == "72"
    # ... and what normalize fixes before math-verify reads a span
    assert str(parse("$1\\,000$", parsing_timeout=None)[0]) != "1000"
    assert parse("\u22125", parsing_timeout=None) == []
    assert normalize("1\\,000 and 10,\\!000 and 1{,}000 and \u22125 and -$5") == "1000 and 10000 and 1000 and -5 and -5"


# --- real data ------------------------------------------------------------------------------------

def _rows(path):
    with open(path) as handle:
        return [json.loads(line) for line in handle]


def _replace_last_boxed(solution: str, new_content: str) -> str:
    start = [m.end() for m in _BOXED.finditer(solution)][-1]
    old = last_boxed(solution)
    body_start = solution.index(old, start)
    return solution[:body_start] + new_content + solution[body_start + len(old):]


def test_every_gsm8k_gold_solution_grades_correct_and_a_perturbed_one_wrong(shared_data):
    rows = _rows(shared_data / "gsm8k_test.jsonl")
    assert len(rows) == 1319
    wrong = [i for i, row in enumerate(rows) if not grade("gsm8k", row["answer"], row["answer"])]
    assert wrong == []
    for row in rows:
        solution, final = row["answer"].rsplit("####", 1)
        number = int(final.strip().replace(",", ""))
        assert not grade("gsm8k", f"{solution}#### {number + 1}", row["answer"])
        # the same number written the ways models write it
        assert grade("gsm8k", f"So the total is $\\boxed{{{number:,}}}$.", row["answer"])
        assert grade("gsm8k", f"Answer: ${number}.00", row["answer"])
        # a cut-off gold solution (the limit fell before its #### line) states no answer yet
        assert extract_answer("gsm8k", solution, finished=False) is None


def test_every_math500_gold_solution_grades_correct_and_a_perturbed_one_wrong(shared_data):
    rows = _rows(shared_data / "math500_test.jsonl")
    assert len(rows) == 500
    # math-verify parses all 500 gold answers; no exceptions were found (see docs/bench.md)
    wrong = [row["unique_id"] for row in rows if not grade("math500", row["solution"], row["answer"])]
    assert wrong == []
    perturbed_right = [row["unique_id"] for row in rows
                       if grade("math500", _replace_last_boxed(row["solution"], f"({last_boxed(row['solution'])}) + 1"),
                                row["answer"])]
    assert perturbed_right == []
    # in the s1 layout the same solution counts only as the answer section
    row = rows[0]
    assert grade("math500", f"<|im_start|>think\n{row['solution']}\n<|im_start|>answer\nAnswer: $\\boxed{{{row['answer']}}}$",
                 row["answer"])
    # cut off while thinking: the box it has written counts, as in a base model's cut reply
    thinking = f"<|im_start|>think\n{row['solution']}"
    assert grade("math500", thinking, row["answer"], finished=False)
    assert grade("math500", row["solution"], row["answer"], finished=False)
    # ... unless a cut prefix has not answered at all (the sensitivity rule), for both alike
    for text in (thinking, row["solution"]):
        assert extract("math500", text, finished=False, truncation="finished_only").source == "unfinished"
    # the turn ended inside the thinking: the thinking is read, as s1's scorer falls back to it
    assert grade("math500", thinking, row["answer"])


def test_boolq_labels_from_the_real_slice(shared_data):
    rows = _rows(shared_data / "boolq_validation_questions.jsonl")[:200]
    for row in rows:
        assert grade("boolq", "Answer: yes" if row["answer"] else "Answer: no", row["answer"])
        assert not grade("boolq", "Answer: no" if row["answer"] else "Answer: yes", row["answer"])


# --- the two steps ---------------------------------------------------------------------------------

def test_the_answer_region():
    assert answer_region("plain reply 18") == "plain reply 18"
    assert answer_region("<|im_start|>think\nx\n<|im_start|>answer\nAnswer: 3") == "\nAnswer: 3"
    assert answer_region("<|im_start|>think\nthinking") == "\nthinking"  # no answer delimiter: the thinking
    # the prompt opened the thinking: the completion starts inside it
    assert answer_region("thinking 18", thinking_opened=True) == "thinking 18"
    assert answer_region("t\n<|im_start|>answer\nA: 1\n<|im_start|>answer\nA: 2", thinking_opened=True) == "\nA: 2"
    # custom delimiters from `format`
    assert answer_region("<think>x</think>ok 5", think_delimiter="<think>", answer_delimiter="</think>") == "ok 5"
    assert extract("gsm8k", "12 and", thinking_opened=True, finished=False).source == "none"
    assert extract("gsm8k", "12 and", thinking_opened=True, finished=False, truncation="finished_only").source == "unfinished"


def test_one_truncation_rule_for_base_and_tuned_completions():
    """Issue 26.4: a base reply and a tuned model's thinking, both cut after the same intermediate
    answer, are read alike under each rule; a finished text is never touched by the rule."""
    said = "So far the total is \\boxed{24}. Now May: 48 / 2 = 24, so in all"
    base = said                                   # no layout: the whole reply is the region
    tuned = f"<|im_start|>think\n{said}"          # s1 layout, cut inside the thinking
    opened = said                                 # s1 layout opened by the prompt (forced mode)
    kinds = [(base, False), (tuned, False), (opened, True)]
    for text, thinking_opened in kinds:
        written = extract("gsm8k", text, finished=False, thinking_opened=thinking_opened)
        assert (written.answer, written.source) == ("24", "box")
        strict = extract("gsm8k", text, finished=False, thinking_opened=thinking_opened, truncation="finished_only")
        assert (strict.answer, strict.source) == (None, "unfinished")
    # a bare number is no answer in any cut text, and the number running into the cut is not read
    for text, thinking_opened in [("48 / 2 = 24", False), ("<|im_start|>think\n48 / 2 = 24", False)]:
        assert extract("gsm8k", text, finished=False, thinking_opened=thinking_opened).answer is None
    assert truncation_rule("Answer: 72", finished=False) == "Answer: "
    for rule in TRUNCATION_RULES:
        assert truncation_rule("Answer: 72", finished=True, rule=rule) == "Answer: 72"
    with pytest.raises(ValueError, match="truncation rule"):
        truncation_rule("x", finished=False, rule="lenient")


def test_rows_carry_the_verdict_under_both_rules_for_both_models():
    from reasondiff.bench import scoring

    said = "First \\boxed{24} so"
    for completion in (said, f"<|im_start|>think\n{said}"):
        cut = scoring.score("gsm8k", completion, "#### 24", finished=False)
        assert cut["correct"] is True and cut["correct_finished_only"] is False
        done = scoring.score("gsm8k", completion, "#### 24", finished=True)
        assert done["correct"] is True and done["correct_finished_only"] is True


def test_finished_decides_only_the_fallback():
    text = "She sells 9 at $2 each, so she makes 18 dollars."
    assert extract("gsm8k", text, finished=True).answer == "18"
    assert extract("gsm8k", text, finished=False).answer is None
    for finished in (True, False):  # an explicit answer counts either way
        assert extract_answer("gsm8k", "#### 18\n", finished=finished) == "18"
        assert extract_answer("math500", "\\boxed{\\frac12}", finished=finished) == "\\frac12"


def test_last_box_counts_and_an_unclosed_box_is_not_an_answer():
    text = "First guess \\boxed{3}. No wait: \\boxed{\\frac{1}{2}}"
    assert extract_answer("math500", text) == "\\frac{1}{2}"
    assert grade("math500", text, "\\frac12")
    assert not grade("math500", text, "3")
    assert last_boxed("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}") == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert extract_answer("math500", "so \\boxed{\\frac{1") is None


@pytest.mark.parametrize("text, expected", [
    ("yes", "yes"), ("No.", "no"), ("not true", "no"), ("It isn't false", "yes"), ("TRUE", "yes"),
    ("no doubt", None), ("No one knows; yes", "yes"), ("no, because", "no"), ("Yes, it is not true", "no"),
    ("maybe", None),
])
def test_boolq_verdict(text, expected):
    assert verdict(text) == expected


@pytest.mark.parametrize("completion, reference, expected", [
    ("\\boxed{1,000}", "#### 1000", True),
    ("\\boxed{\\$18}", "#### 18", True),
    ("\\boxed{18.0}", "#### 18", True),
    ("\\boxed{18.}", "#### 18", True),
    ("#### 18.", "18", True),
    ("\\boxed{-4}", "#### -4", True),
    ("\\boxed{\\dfrac{8}{2}}", "#### 4", True),
    ("\\boxed{\\frac{4}{3}}", "#### 3", False),  # not the 3 of the denominator
    ("Answer: 18.50 dollars", "#### 18.5", True),
    ("\\boxed{18 \\text{ apples}}", "#### 18", True),
    ("\\boxed{17}", "#### 18", False),
    ("\\boxed{}", "#### 18", False),
    ("The answer is 1,234,567.", "#### 1234567", True),
])
def test_gsm8k_numbers(completion, reference, expected):
    assert grade("gsm8k", completion, reference) is expected


@pytest.mark.parametrize("completion, reference, expected", [
    ("\\boxed{0.5}", "\\frac{1}{2}", True),
    ("\\boxed{\\dfrac{\\sqrt3}{2}}", "\\frac{\\sqrt{3}}{2}", True),
    ("\\boxed{2\\sqrt{2}}", "\\sqrt{8}", True),
    ("\\boxed{(3, \\frac{\\pi}{2})}", "\\left( 3, \\frac{\\pi}{2} \\right)", True),
    ("\\boxed{x^2+2x+1}", "(x+1)^2", True),
    ("\\boxed{10{,}000}", "10,\\!000", True),
    ("\\boxed{\\sqrt{7}}", "\\sqrt{8}", False),
    ("\\boxed{[1, 2)}", "[1, 2]", False),
])
def test_math_equivalence_not_string_match(completion, reference, expected):
    assert grade("math500", completion, reference) is expected


@pytest.mark.parametrize("completion", [None, 42, "", "\\boxed{", "\\boxed{\\frac{}{}}", "}}}{{{\\boxed{$$}",
                                        "\\boxed{" + "(" * 500 + "}", "Answer: " + "9" * 5000, "\x00\\boxed{\\x}",
                                        "Answer: $$$", "#### $-", "<|im_start|>answer" * 3])
def test_garbage_never_raises(completion):
    for task, reference in (("gsm8k", "#### 3"), ("math500", "3"), ("boolq", True)):
        for finished in (True, False):
            assert grade(task, completion, reference, finished=finished) in (False, True)
    assert grade("math500", "\\boxed{3}", None) is False


def test_unknown_task_is_a_caller_bug():
    with pytest.raises(ValueError, match="unknown task"):
        grade("mmlu", "\\boxed{3}", "3")


def test_math_grading_works_in_worker_threads():
    """math-verify's default timeouts use signal.alarm, which raises outside the main thread (and
    would be swallowed into False): grading must give the same verdicts in a thread pool."""
    cases = [("\\boxed{\\frac{1}{2}}", "0.5", True), ("\\boxed{3}", "\\sqrt{9}", True), ("\\boxed{4}", "5", False),
             ("Answer: 1\\,000", "1000", True)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        verdicts = list(pool.map(lambda c: grade("math500", c[0], c[1]), cases))
    assert verdicts == [c[2] for c in cases]


# --- every reasoning layout: the answer region, and inline math after prose (issue 29) ------------

_LAYOUT_DELIMITERS = {"s1": ("<|im_start|>think", "<|im_start|>answer"), "think": ("<think>", "</think>"),
                      "none": (None, None)}
_LAYOUT_TURNS = {  # (thinking with a decoy box, answer): how each layout writes a turn
    "s1": ("<|im_start|>think\nFirst \\boxed{3}, no.\n<|im_start|>answer\n", ""),
    "think": ("<think>\nFirst \\boxed{3}, no.\n</think>\n\n", ""),
    "none": ("", ""),
}


@pytest.mark.parametrize("layout", ["s1", "think", "none"])
@pytest.mark.parametrize("task, answer, reference, expected", [
    ("math500", "Answer: the sum is $\\frac{7}{2}$.", "\\frac{7}{2}", "$\\frac{7}{2}$"),
    ("math500", "Final Answer: so $x = \\frac{7}{2}$ in lowest terms.", "\\frac{7}{2}", "$x = \\frac{7}{2}$"),
    ("math500", "**Final Answer:** the area is $12\\pi$ square units.", "12\\pi", "$12\\pi$"),
    ("gsm8k", "Answer: she has $18$ apples left.", "#### 18", "$18$"),
    ("gsm8k", "Answer: it costs $18 and $5 more.", "#### 5", None),  # currency, not math: no value after the marker
])
def test_inline_math_after_prose_in_every_layout(layout, task, answer, reference, expected):
    think, answer_delimiter = _LAYOUT_DELIMITERS[layout]
    completion = _LAYOUT_TURNS[layout][0] + answer
    extraction = extract(task, completion, think_delimiter=think, answer_delimiter=answer_delimiter)
    if expected is None:  # a finished gsm8k reply falls back to its last number, never the marker
        assert extraction.source != "marker"
        return
    assert (extraction.answer, extraction.source) == (expected, "marker")
    assert grade(task, completion, reference, think_delimiter=think, answer_delimiter=answer_delimiter)


@pytest.mark.parametrize("layout", ["s1", "think"])
def test_the_answer_region_of_each_thinking_layout(layout):
    think, close = _LAYOUT_DELIMITERS[layout]
    kwargs = {"think_delimiter": think, "answer_delimiter": close}
    opened = "First \\boxed{3}, then 7/2"  # the prompt opened the thinking, the model continues it
    # cut inside the thinking: the box it wrote counts, as in any model's cut reply (one truncation
    # rule, issue 26.4); under the sensitivity rule a cut prefix has not answered
    assert extract("math500", opened, finished=False, thinking_opened=True, **kwargs).answer == "3"
    assert extract("math500", opened, finished=False, thinking_opened=True, truncation="finished_only",
                   **kwargs).source == "unfinished"
    # the turn ended inside the thinking: the thinking is the region (s1's scorer's fallback)
    assert extract("math500", opened + ".", finished=True, thinking_opened=True, **kwargs).answer == "3"
    closed = f"{opened}\n{close}\n\nAnswer: the sum is $\\frac{{7}}{{2}}$."
    assert answer_region(closed, thinking_opened=True, **kwargs) == "\n\nAnswer: the sum is $\\frac{7}{2}$."
    assert grade("math500", closed, "\\frac{7}{2}", thinking_opened=True, **kwargs)
    # a plain model's turn is all answer, delimiters of other layouts mean nothing to it
    assert answer_region(closed, think_delimiter=None, answer_delimiter=None) == closed
