"""The fine-tune's held-out rows: the one reader scan, analyze and intervene call (issue 26.1).

`holdout_split(cfg)` is the split of the tuned model's dataset into trained and held-out rows, as
its finetune run recorded it in manifest.json (reasondiff/lm/holdout.py has the rule);
`heldout_rows(cfg)` loads the held-out rows themselves, checked against the recorded hashes;
`reasoning_rows(cfg, stage, max_rows=...)` is what a stage reads for `<stage>.reasoning_text` =
heldout_rows or file (a file sharing questions with the trained rows refused unless
`<stage>.allow_trained_text`), with the label its tables carry.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from reasondiff.core.errors import UserError
from reasondiff.lm.holdout import HoldoutSplit, resolve_split, row_key

log = logging.getLogger(__name__)


def holdout_split(cfg) -> HoldoutSplit:
    """Which rows of the fine-tune's dataset the tuned model trained on and which it never saw."""
    from reasondiff.app.preflight import finetune_dir_of

    return resolve_split(cfg, finetune_dir_of(cfg))


def heldout_rows(cfg, split: HoldoutSplit | None = None) -> list[dict[str, Any]]:
    """The held-out rows (dataset order), never trained on. A dataset whose rows no longer match
    the hashes the fine-tune recorded, or a split with no held-out row, is one clear error."""
    from reasondiff.lm.data_sources import load_rows

    split = split or holdout_split(cfg)
    if not split.heldout:
        raise UserError(f"no held-out rows of {split.dataset} ({split.origin}): re-run finetune with "
                        "finetune.holdout.fraction > 0, or read the tuned model's own bench generations "
                        "(reasoning_text=on_policy)")
    dataset = load_rows(split.dataset, split=cfg.finetune.split, config_key="finetune.dataset",
                        fields=split.fields)
    if len(dataset) != len(split.question_keys):
        raise UserError(f"finetune.dataset={split.dataset} has {len(dataset)} rows but the fine-tune split "
                        f"{len(split.question_keys)} ({split.origin}): the data changed since; re-run finetune")
    rows = [dict(dataset[i]) for i in split.heldout]
    for i, row in zip(split.heldout, rows, strict=True):
        if row_key(row, split.fields) != split.row_keys[i]:
            raise UserError(f"finetune.dataset={split.dataset}: row {i} differs from the row the fine-tune held out "
                            f"({split.origin}): the data changed since; re-run finetune")
    if not split.origin.startswith("finetune manifest"):
        log.warning("held-out rows %s", split.origin)
    return rows


@dataclass
class ReasoningRows:
    """s1K-style rows a stage reads as reasoning text, and what they are."""

    rows: list[dict[str, Any]]
    label: str
    """"held-out rows", "file" (no row shares a question with the trained rows) or "trained rows"."""
    source: str


def reasoning_rows(cfg, stage: str, *, max_rows: int) -> ReasoningRows:
    """The first `max_rows` rows of `<stage>.reasoning_text` = heldout_rows or file (on_policy is
    text, not rows: `reasondiff.bench.on_policy_conversations`). A file sharing questions with the
    trained rows is refused in one line unless `<stage>.allow_trained_text`."""
    import itertools

    from reasondiff.lm.data_sources import load_rows
    from reasondiff.lm.holdout import LABELS, corpus_overlap

    section = getattr(cfg, stage)
    if section.reasoning_text == "heldout_rows":
        split = holdout_split(cfg)
        rows = heldout_rows(cfg, split)
        return ReasoningRows(rows[:max_rows], LABELS["heldout_rows"],
                             f"{len(rows)} held-out rows of {split.dataset} ({split.origin})")
    if section.reasoning_text != "file":
        raise ValueError(f"{stage}.reasoning_text={section.reasoning_text} has no rows")
    key = f"{stage}.reasoning_corpus"
    corpus = section.reasoning_corpus
    stream = load_rows(corpus, split=getattr(section, "reasoning_split", "train"), streaming=True, config_key=key)
    rows = [dict(r) for r in itertools.islice(stream, max_rows)]
    label, problem = corpus_overlap(holdout_split(cfg), rows, stage=stage, corpus=corpus,
                                    allow=section.allow_trained_text)
    if problem:
        raise UserError(problem)
    return ReasoningRows(rows, label, f"{corpus} ({label})")
