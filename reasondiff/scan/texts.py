"""The two texts a scan reads: held-out general text, and reasoning conversations in the fine-tune's layout.

General text comes through harvest's public reader (`harvest.heldout_contexts`): the harvest corpus
packed exactly as harvest packs it, from the first document the harvest did not use. Reasoning text
(`scan.reasoning_text`) is by default the fine-tune's HELD-OUT rows (never trained on, as its
manifest recorded them; `finetune.heldout_rows`), one s1K-style row per sequence, rendered and
tokenized by finetune's own `tokenize_example` with the tuned model's tokenizer (its chat template,
the turn in its layout `format.layout`: s1's `<|im_start|>think` ... `<|im_start|>answer`, or R1's
`<think>` ... `</think>`; its end-of-turn token), so the tuned model sees the kind of sequence it was
trained on, not the sequences themselves; a row longer than the context loses the middle of its
thinking (finetune's `keep_answer`). `on_policy` reads the tuned model's own bench generations
instead, `file` any s1K-style corpus (refused when it shares questions with the trained rows, unless
`scan.allow_trained_text`). Sequences are right-padded.

Answer tokens: the positions whose NEXT token belongs to the answer block, from the closing
delimiter of the thinking through the closing end-of-turn token: where the model states its answer.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, replace

import torch

from reasondiff.config import Config
from reasondiff.core.errors import UserError

log = logging.getLogger(__name__)


@dataclass
class ScanTexts:
    """Token ids of one text kind, right-padded, with the positions that count."""

    name: str
    """"general" or "reasoning"."""
    input_ids: torch.Tensor
    """[n, T] token ids."""
    valid: torch.Tensor
    """[n, T] bool: a real token (not padding)."""
    answer: torch.Tensor | None = None
    """[n, T] bool: the next token is in the s1 answer block (reasoning text only)."""
    source: str = ""
    label: str = "held-out general"
    """What the text is, in every table: held-out general, held-out rows, on-policy, file, trained rows."""

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def digest(self) -> str:
        """sha1 of the token ids and masks (a partial scan resumes only on the same text)."""
        h = hashlib.sha1(self.input_ids.to(torch.int64).numpy().tobytes())
        h.update(self.valid.numpy().tobytes())
        if self.answer is not None:
            h.update(self.answer.numpy().tobytes())
        return h.hexdigest()

    def rows(self, rows: slice) -> ScanTexts:
        """The contexts `rows`, cut after the last real token of the longest one (no all-padding columns)."""
        valid = self.valid[rows]
        length = max(int(valid.sum(dim=1).max()), 1) if len(valid) else 1
        answer = None if self.answer is None else self.answer[rows, :length]
        return replace(self, input_ids=self.input_ids[rows, :length], valid=valid[:, :length], answer=answer)


def general_texts(cfg: Config, tokenizer, *, documents_used: int) -> ScanTexts:
    """`scan.n_general_contexts` contexts of `scan.context_length` tokens: `scan.general_corpus` from its
    start, or the harvest corpus after the `documents_used` documents the harvest read."""
    from reasondiff import harvest
    s = cfg.scan
    if s.general_corpus:
        source_cfg, skip = replace(cfg.harvest, corpus=s.general_corpus, corpus_config=None), 0
    else:
        source_cfg, skip = cfg.harvest, documents_used
    source_cfg = replace(source_cfg, reasoning_fraction=0.0, reasoning_corpus=None)
    ids = harvest.heldout_contexts(source_cfg, tokenizer, s.n_general_contexts, s.context_length, documents_used=skip)
    return ScanTexts(name="general", input_ids=ids, valid=torch.ones_like(ids, dtype=torch.bool),
                     source=f"{source_cfg.corpus} from document {skip}")


def reasoning_texts(cfg: Config, tokenizer) -> ScanTexts | None:
    """Up to `scan.n_reasoning_contexts` conversations in the fine-tune's layout (None when 0 are
    asked), from `scan.reasoning_text`: held-out rows (default), on-policy generations, or a file."""
    from reasondiff import finetune
    s = cfg.scan
    if s.n_reasoning_contexts == 0:
        return None
    if s.reasoning_text == "on_policy":
        from reasondiff import bench
        text = bench.on_policy_conversations(cfg, tokenizer, n_contexts=s.n_reasoning_contexts,
                                             context_length=s.context_length, config_key="scan.reasoning_text")
        return _padded(tokenizer, text.conversations, text.answer_starts, source=text.source, label="on-policy")
    found = finetune.reasoning_rows(cfg, "scan", max_rows=20 * s.n_reasoning_contexts)
    key = "scan.reasoning_corpus" if s.reasoning_text == "file" else "finetune.dataset (held-out rows)"
    thinking_field, attempt_field = finetune.TRACE_FIELDS[cfg.finetune.trace_source]
    examples, too_long = [], 0
    for index, row in enumerate(found.rows):
        finetune.validate_row(row, index=index, source=key, trace_source=cfg.finetune.trace_source)
        example = finetune.tokenize_example(tokenizer, row["question"], row[thinking_field], row[attempt_field],
                                            cfg.format)
        example = finetune.trim_thinking_middle(example, s.context_length)
        if example is None:
            too_long += 1
            continue
        examples.append(example)
        if len(examples) == s.n_reasoning_contexts:
            break
    if too_long:
        log.warning("%s: %d rows skipped, their question and answer alone exceed scan.context_length=%d",
                    found.source, too_long, s.context_length)
    if not examples:
        raise UserError(f"{key}: no row fits in scan.context_length={s.context_length} tokens "
                        "(raise scan.context_length or set scan.n_reasoning_contexts=0)")
    if len(examples) < s.n_reasoning_contexts:
        log.warning("%s: only %d conversations (asked for scan.n_reasoning_contexts=%d)", found.source, len(examples),
                    s.n_reasoning_contexts)
    return _padded(tokenizer, [e.input_ids for e in examples], [e.answer_start for e in examples],
                   source=found.source, label=found.label)


def _padded(tokenizer, conversations: list[list[int]], answer_starts: list[int | None], *, source: str,
            label: str) -> ScanTexts:
    """Right-padded ids, the real tokens, and the positions whose next token is in the answer block."""
    length = max(len(ids) for ids in conversations)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.full((len(conversations), length), int(pad), dtype=torch.long)
    valid = torch.zeros(len(conversations), length, dtype=torch.bool)
    answer = torch.zeros(len(conversations), length, dtype=torch.bool)
    for i, (conversation, start) in enumerate(zip(conversations, answer_starts, strict=True)):
        n = len(conversation)
        ids[i, :n] = torch.tensor(conversation)
        valid[i, :n] = True
        if start is not None:  # position t predicts token t + 1: count t when t + 1 lies in [start, n)
            answer[i, max(start - 1, 0):n - 1] = True
    return ScanTexts(name="reasoning", input_ids=ids, valid=valid, answer=answer, source=source, label=label)
