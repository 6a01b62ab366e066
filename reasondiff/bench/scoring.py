"""The verdict of one generations.jsonl row under the bench's protocol, and re-grading of stored rows.

A row keeps what its verdict depends on: the completion, whether it `finished` (end of turn within
the limit), whether the prompt opened the thinking, and the gold `reference`. Its verdict can
therefore always be recomputed. Rows graded by an older grader (`grader` differs from
GRADER_VERSION) are regraded when the tables are built, so results.csv never mixes graders and a
grading fix never needs a regeneration.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from reasondiff.bench import grading, lmeval

GRADER_VERSION = "4"
"""Bump with every change to grading.py or lmeval.py that can change a verdict. 3: a value stated in
prose after a marker is read from the sentence's inline math (pairs). 4: a prefix the limit cut is
read by one rule for every model (`grading.truncation_rule`), and rows carry the verdict under the
other rule (`correct_finished_only`)."""
SENSITIVITY_RULE = "finished_only"
"""The truncation rule reported beside the bench's own (grading.TRUNCATION_RULES[0])."""


def score(task: str, completion: str, reference: Any, *, finished: bool, thinking_opened: bool = False,
          protocol: str = "chat", think_delimiter: str | None = grading.DEFAULT_THINK_DELIMITER,
          answer_delimiter: str | None = grading.DEFAULT_ANSWER_DELIMITER) -> dict[str, Any]:
    """The grading fields of a row: answer, answer_source, correct, no_answer, correct_finished_only
    (the verdict under the sensitivity's truncation rule), and lm-eval's scores under its protocol."""
    if protocol == "lm_eval" and task == "gsm8k":
        scores = lmeval.gsm8k_scores(completion, str(reference))
        strict = scores["strict_answer"]
        unfinished = grading.truncation_rule(completion, finished=finished, rule=SENSITIVITY_RULE) is None
        return {"answer": None if strict == lmeval.INVALID else strict, "answer_source": "lm_eval_strict_match",
                "correct": scores["strict_match"], "no_answer": strict == lmeval.INVALID,
                f"correct_{SENSITIVITY_RULE}": scores["strict_match"] and not unfinished,
                "flexible_extract": scores["flexible_extract"], "flexible_answer": scores["flexible_answer"],
                "grader": GRADER_VERSION}
    layout = {"thinking_opened": thinking_opened, "think_delimiter": think_delimiter,
              "answer_delimiter": answer_delimiter}
    extraction = grading.extract(task, completion, finished=finished, **layout)
    correct = grading.grade_extracted(task, extraction.answer, reference)
    if finished:  # the truncation rules differ only on cut prefixes
        other = correct
    else:
        other_answer = grading.extract(task, completion, finished=False, truncation=SENSITIVITY_RULE, **layout).answer
        other = grading.grade_extracted(task, other_answer, reference)
    return {"answer": extraction.answer, "answer_source": extraction.source, "correct": correct,
            "no_answer": extraction.answer is None, f"correct_{SENSITIVITY_RULE}": other,
            "grader": GRADER_VERSION}


def infer_finished(rows: Iterable[dict[str, Any]]) -> dict[tuple, bool]:
    """`finished` of prefix-mode rows written before rows recorded it, from their token counts:
    a prefix shorter than its limit ended by itself (the sweep generated up to the largest limit),
    and so did one whose generation is no longer at a larger limit. A prefix of exactly the largest
    limit is taken as unfinished, the one case the counts cannot settle."""
    by_question: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_question[(row["model"], row["task"], row["id"])].append(row)
    finished = {}
    for key, members in by_question.items():
        members = sorted(members, key=lambda r: r["limit"])
        lengths = [r["tokens"] for r in members]
        for k, row in enumerate(members):
            ended = row["tokens"] < row["limit"] or any(length == row["tokens"] for length in lengths[k + 1:])
            finished[(*key, row["limit"])] = ended
    return finished


def regrade_rows(rows: list[dict[str, Any]], *, references: Mapping[tuple[str, str], Any],
            think_delimiter: str | None = grading.DEFAULT_THINK_DELIMITER,
            answer_delimiter: str | None = grading.DEFAULT_ANSWER_DELIMITER,
            delimiters: Mapping[str, tuple[str | None, str | None]] | None = None) -> int:
    """Regrade (in place) rows from another grader version; returns how many were regraded.
    `references`: {(task, id): gold} for rows that do not carry their own. `delimiters`:
    {model: (think, answer)} of each model's own layout (a model not in it gets the two defaults)."""
    stale = [r for r in rows if r.get("grader") != GRADER_VERSION]
    if not stale:
        return 0
    inferred = infer_finished([r for r in stale if "finished" not in r])
    for row in stale:
        reference = row["reference"] if "reference" in row else references.get((row["task"], row["id"]))
        finished = row["finished"] if "finished" in row else inferred[(row["model"], row["task"], row["id"], row["limit"])]
        think, answer = (delimiters or {}).get(row["model"], (think_delimiter, answer_delimiter))
        row.update(score(row["task"], row["completion"], reference, finished=finished,
                         thinking_opened=bool(row.get("thinking_opened", False)),
                         protocol=row.get("protocol", "chat"), think_delimiter=think, answer_delimiter=answer))
        row.setdefault("finished", finished)
        row.setdefault("reference", reference)
    return len(stale)
