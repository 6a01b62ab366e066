"""The two kinds of text analyze reads: held-out general text, and reasoning conversations in the
layout the fine-tune taught.

General text: fixed-length packed contexts, every token real. Reasoning text: one s1K-style row per
context, rendered with the tuned model's chat template around its layout of the assistant turn
(`format.layout`, `reasondiff/lm/layouts.py`: s1's `<|im_start|>think` thinking `<|im_start|>answer`
answer, or R1's `<think>` thinking `</think>` answer), exactly the conversation the fine-tune trained
on (`reasondiff.lm.sft_example`, finetune's own tokenization), so that latents tied to the layout (the
delimiters, the answer block) can fire at all. A conversation longer than the context loses the middle of its
thinking, never its prompt, delimiters or answer; shorter ones are right-padded and `valid` marks the
real tokens (a causal model's real predictions never see the padding after them).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from reasondiff.config import ReasoningFormat
from reasondiff.core.errors import UserError

log = logging.getLogger(__name__)


@dataclass
class Contexts:
    """Token ids of one text kind and the real (non-padding) positions."""

    name: str
    """"general" or "reasoning"."""
    input_ids: torch.Tensor
    """[n, T] token ids."""
    valid: torch.Tensor
    """[n, T] bool: a real token (False = right padding)."""
    label: str = "held-out general"
    """What the text is, in every table: held-out general, held-out rows, on-policy, file, trained rows."""
    source: str = ""
    assistant_starts: torch.Tensor | None = None
    """[n] per context, the index of the first token of the assistant turn (the first token after the chat
    template's generation prompt, where the fine-tune's loss mask starts); None for general text."""

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def length(self) -> int:
        return self.input_ids.shape[1]

    def digest(self) -> str:
        """sha1 of ids and mask (a partial pass resumes only on the same text)."""
        h = hashlib.sha1(self.input_ids.to(torch.int64).numpy().tobytes())
        h.update(self.valid.numpy().tobytes())
        return h.hexdigest()

    @classmethod
    def packed(cls, name: str, input_ids: torch.Tensor) -> Contexts:
        return cls(name=name, input_ids=input_ids, valid=torch.ones_like(input_ids, dtype=torch.bool))


def reasoning_conversations(rows: Iterable[dict], tokenizer, fmt: ReasoningFormat, *, n_contexts: int,
                            context_length: int, trace_source: str = "deepseek",
                            config_key: str = "analyze.reasoning_corpus") -> Contexts:
    """Up to `n_contexts` conversations, one per context, right-padded to the longest (<= context_length)."""
    from reasondiff.lm.data_sources import require_fields
    from reasondiff.lm.sft_example import TRACE_FIELDS, conversation_example

    thinking_field, attempt_field = TRACE_FIELDS[trace_source]
    fields = ("question", thinking_field, attempt_field)
    conversations, starts, too_long = [], [], 0
    for index, row in enumerate(itertools.islice(rows, 20 * n_contexts)):
        require_fields(row, fields, index=index, source=config_key)
        example = conversation_example(tokenizer, row["question"], row[thinking_field], row[attempt_field], fmt,
                                       context_length)
        if example is None:
            too_long += 1
            continue
        conversations.append(example.input_ids)
        starts.append(example.prompt_tokens)
        if len(conversations) == n_contexts:
            break
    if too_long:
        log.warning("%s: %d rows skipped: their prompt and answer alone exceed analyze.context_length=%d",
                    config_key, too_long, context_length)
    if not conversations:
        raise UserError(f"{config_key}: no conversation fits in analyze.context_length={context_length} tokens "
                        "(raise it, or set analyze.n_reasoning_contexts=0)")
    if len(conversations) < n_contexts:
        log.warning("%s: only %d conversations (asked for analyze.n_reasoning_contexts=%d)", config_key,
                    len(conversations), n_contexts)
    return padded_conversations(conversations, tokenizer, assistant_starts=starts)


def padded_conversations(conversations: list[list[int]], tokenizer, assistant_starts: list[int] | None = None,
                         **fields) -> Contexts:
    """One conversation per context, right-padded to the longest; `valid` marks the real tokens,
    `assistant_starts` where each one's assistant turn starts (when known)."""
    length = max(len(ids) for ids in conversations)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    input_ids = torch.full((len(conversations), length), int(pad or 0), dtype=torch.long)
    valid = torch.zeros(len(conversations), length, dtype=torch.bool)
    for i, ids in enumerate(conversations):
        input_ids[i, :len(ids)] = torch.tensor(ids)
        valid[i, :len(ids)] = True
    starts = None if assistant_starts is None else torch.tensor(assistant_starts, dtype=torch.long)
    return Contexts(name="reasoning", input_ids=input_ids, valid=valid, assistant_starts=starts, **fields)


def pack_texts(texts, tokenizer, n_contexts: int, context_length: int, *, config_key: str) -> torch.Tensor:
    """Concatenate tokenised texts (each ended by EOS) and cut into n contexts of fixed length."""
    eos = tokenizer.eos_token_id
    need = n_contexts * context_length
    buffer: list[int] = []
    for text in texts:
        buffer.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        if eos is not None:
            buffer.append(eos)
        if len(buffer) >= need:
            break
    n = len(buffer) // context_length
    if n == 0:
        raise UserError(f"{config_key}: not enough text for one context of {context_length} tokens")
    if n < n_contexts:
        log.warning("%s: only %d contexts of %d tokens available (asked for %d)", config_key, n, context_length, n_contexts)
    n = min(n, n_contexts)
    return torch.tensor(buffer[: n * context_length]).view(n, context_length)
