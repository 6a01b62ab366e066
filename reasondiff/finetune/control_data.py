"""Rows for the control fine-tune of a real model (+null=control, docs/null.md), from general text.

`python -m reasondiff.finetune.control_data IN.jsonl OUT.jsonl --rows 1000` cuts each document (a
`text` field, e.g. ../shared/data/wiki_text_sample.jsonl or the harvest corpus) into passages of about
`--chars` characters at paragraph breaks and makes chat rows in the s1K-1.1 columns: the user asks to
continue a passage, the assistant answers at once with the next passage, the thinking is empty. As
many rows as the reasoning fine-tune's (s1K-1.1: 1000) give the same number of SFT steps with the
same recipe; the passages are long, so each step supervises a comparable number of tokens.
Documents are taken in turn, one passage and its continuation each, so every document contributes
before any contributes twice (the repo's 219-article Wikipedia slice gives 1227 rows of 1500
characters).
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from reasondiff.core import artifacts
from reasondiff.core.errors import UserError

PROMPT = "Continue this text:\n\n{passage}"


def passages(text: str, chars: int) -> list[str]:
    """Consecutive passages of at least `chars` characters, cut at paragraph breaks (the last may be shorter)."""
    out, current = [], ""
    for paragraph in (p.strip() for p in text.split("\n")):
        if not paragraph:
            continue
        current = f"{current}\n{paragraph}" if current else paragraph
        if len(current) >= chars:
            out.append(current)
            current = ""
    if current:
        out.append(current)
    return out


def control_rows(texts: Iterable[str], n_rows: int, *, chars: int = 1500) -> list[dict[str, str]]:
    """`n_rows` continuation chats (s1K-1.1 columns, empty thinking) from the documents, round-robin."""
    pairs_per_doc = []
    for text in texts:
        parts = [p for p in passages(text, chars) if len(p) >= chars // 4]
        pairs_per_doc.append(list(itertools.pairwise(parts)))  # each passage is continued by the next
    rows: list[dict[str, str]] = []
    depth = 0
    while len(rows) < n_rows and any(len(p) > depth for p in pairs_per_doc):
        for doc_pairs in pairs_per_doc:
            if depth < len(doc_pairs) and len(rows) < n_rows:
                prompt, answer = doc_pairs[depth]
                rows.append({"question": PROMPT.format(passage=prompt), "solution": answer, "cot_type": "chat",
                             "source_type": "reasondiff/control/continuation", "metadata": "{}",
                             "gemini_thinking_trajectory": "", "gemini_attempt": answer,
                             "deepseek_thinking_trajectory": "", "deepseek_attempt": answer,
                             "gemini_grade": "", "deepseek_grade": ""})
        depth += 1
    if len(rows) < n_rows:
        raise UserError(f"only {len(rows)} control rows of about {chars} characters in these documents, "
                        f"{n_rows} asked: lower --chars or give more text")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reasondiff.finetune.control_data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="JSON Lines with a `text` field")
    parser.add_argument("out", type=Path, help="the control rows (JSON Lines, s1K-1.1 columns)")
    parser.add_argument("--rows", type=int, default=1000, help="as many as the reasoning fine-tune's rows")
    parser.add_argument("--chars", type=int, default=1500, help="characters per passage (about)")
    args = parser.parse_args(argv)
    with open(args.source) as handle:
        texts = [json.loads(line)["text"] for line in handle if line.strip()]
    try:
        rows = control_rows(texts, args.rows, chars=args.chars)
    except UserError as err:
        raise SystemExit(f"error: {err}") from None
    with artifacts.atomic_write(args.out, "w") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)
    print(f"{len(rows)} control rows -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
