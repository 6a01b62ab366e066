"""s1K-1.1 rows -> tokenized SFT examples in the tuned layout, with loss on the assistant turn only.

The assistant turn is `{think}\\n{thinking}\\n{answer}\\n{prefix}{attempt}` (simplescaling/s1; another
`format.layout` writes its own delimiters, reasondiff/lm/layouts.py) inside the model's own chat
template, the question being the user turn. We tokenize the whole rendered
conversation once and map character spans to tokens through the offset mapping, so the labels,
the thinking span (for `keep_answer`) and the closing end-of-turn token are exact even where BPE
merges across a boundary — tokenizing the pieces separately would not give the same ids.

Overlong rows are the paper's silent pitfall: with block size 2048 most real s1K-1.1 traces are
longer, and right-truncation cuts the answer and the end-of-turn token away. `length_report`
says how many, and `apply_overlong_policy` offers `truncate` (paper), `drop`, `keep_answer`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from reasondiff.config import FinetuneConfig, ReasoningFormat
from reasondiff.core.errors import UserError
from reasondiff.lm.data_sources import load_rows, require_fields
from reasondiff.lm.holdout import HoldoutSplit, split_rows
from reasondiff.lm.layouts import conversation_text, layout_for

log = logging.getLogger(__name__)

TRACE_FIELDS: dict[str, tuple[str, str]] = {
    "deepseek": ("deepseek_thinking_trajectory", "deepseek_attempt"),
    "gemini": ("gemini_thinking_trajectory", "gemini_attempt"),
}
IGNORE_INDEX = -100
"""Label of a token that carries no loss (PyTorch cross-entropy's ignore_index)."""


# --- loading and validation -------------------------------------------------------------------------

def load_s1k_rows(cfg: FinetuneConfig) -> list[dict[str, Any]]:
    """The rows SFT trains on: the dataset minus the held-out rows (`finetune.holdout`)."""
    rows, split = load_s1k_split(cfg)
    return [rows[i] for i in split.trained]


def load_s1k_split(cfg: FinetuneConfig) -> tuple[list[dict[str, Any]], HoldoutSplit]:
    """Every row of `finetune.dataset` (hub id or local file), validated (a bad row fails with its
    index), and the split into held-out and trained rows (`finetune.holdout`, then `limit_rows`)."""
    fields = ("question", *TRACE_FIELDS[cfg.trace_source])
    dataset = load_rows(cfg.dataset, split=cfg.split, config_key="finetune.dataset", fields=fields)
    rows = [dict(row) for row in dataset]
    if not rows:
        raise UserError(f"finetune.dataset={cfg.dataset}: no rows (split {cfg.split!r})")
    for index, row in enumerate(rows):
        validate_row(row, index=index, source=cfg.dataset, trace_source=cfg.trace_source,
                     require_thinking=cfg.require_thinking)
    split = split_rows(rows, dataset=cfg.dataset, fields=fields, fraction=cfg.holdout.fraction,
                       n_rows=cfg.holdout.n_rows, seed=cfg.holdout.seed, limit_trained=cfg.limit_rows)
    if not split.trained:
        raise UserError(f"finetune.holdout leaves no row of finetune.dataset={cfg.dataset} to train on "
                        f"({len(split.heldout)} of {len(rows)} held out): lower finetune.holdout.fraction / n_rows")
    return rows, split


def validate_row(row: Mapping[str, Any], *, index: int, source: str, trace_source: str,
                 require_thinking: bool = True) -> None:
    thinking_field, attempt_field = TRACE_FIELDS[trace_source]
    fields = ("question", thinking_field, attempt_field)
    require_fields(row, fields, index=index, source=source)
    for name in fields:
        value = row[name]
        if not isinstance(value, str):
            # s1K (v1.0) stores `thinking_trajectories` as a list; s1K-1.1 traces are strings.
            raise UserError(f"{source}: row {index} field {name} is a {type(value).__name__}, expected a string "
                            "(is this s1K-1.1? set finetune.dataset=simplescaling/s1K-1.1)")
        if not value.strip() and (require_thinking or name != thinking_field):
            raise UserError(f"{source}: row {index} field {name} is empty "
                            f"(try finetune.trace_source={'gemini' if trace_source == 'deepseek' else 'deepseek'})")


# --- tokenization -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class SFTExample:
    """One tokenized conversation. Spans are token indices, end-exclusive."""

    input_ids: list[int]
    labels: list[int]
    prompt_tokens: int
    """Tokens before the assistant content (system + user turn + `<|im_start|>assistant\\n`)."""
    thinking_span: tuple[int, int]
    answer_start: int
    """First token of the answer delimiter: everything from here on must survive for the answer to be whole."""
    turn_end: int
    """One past the closing end-of-turn token; the sequence ends here."""

    def __len__(self) -> int:
        return len(self.input_ids)


def check_template(tokenizer, layout) -> None:
    """The chat template renders an assistant turn right after its generation prompt (less any
    thinking the prompt opens) and closes it with the EOS token: SFT and the reasoning corpus are
    built as prompt + assistant content + EOS, so the model learns to stop where it stops."""
    eos = tokenizer.eos_token
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "x"}]
    prompt = tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    opening = layout.think_open + "\n" if layout.thinks and prompt.endswith(layout.think_open + "\n") else \
        layout.think_open if layout.thinks and prompt.endswith(layout.think_open) else ""
    head = prompt[:len(prompt) - len(opening)]
    if not full.startswith(head + "x"):
        raise UserError("the tokenizer's chat template does not render the assistant content right after the "
                        "generation prompt; SFT needs a ChatML-like template (model.path)")
    if not eos or full[len(head) + 1:len(head) + 1 + len(eos)] != eos:
        raise UserError(f"the chat template does not close the assistant turn with the EOS token {eos!r}; "
                        "the model would never learn to stop (model.path)")


def tokenize_example(tokenizer, question: str, thinking: str, attempt: str, fmt: ReasoningFormat) -> SFTExample:
    """Render with the chat template in the tuned layout (`format.layout`), tokenize once, and
    label only the assistant turn + its end token. The conversation is the template's generation
    prompt + the assistant content + EOS (`lm.layouts.conversation_text`), which is the template's
    own rendering for ChatML and also right for R1-style templates that drop the thinking from
    rendered assistant messages and open `<think>` in the prompt."""
    layout = layout_for(fmt, "tuned")
    check_template(tokenizer, layout)
    eos = tokenizer.eos_token
    full, content_start = conversation_text(tokenizer, layout, question, thinking, attempt)
    turn_end_char = len(full)
    content = full[content_start:turn_end_char - len(eos)]
    opened = len(layout.assistant_content(thinking, attempt)) - len(content)  # what the prompt already opened
    think_char = content_start + len(layout.thinking_start()) - opened
    think_end_char = think_char + len(thinking.strip()) if layout.thinks else content_start

    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]

    def first_token_at(char: int) -> int:
        """Index of the first token that ends after `char` (the token holding or following it)."""
        return next((i for i, (_, end) in enumerate(offsets) if end > char), len(ids))

    prompt_tokens = first_token_at(content_start)
    if offsets[prompt_tokens][0] < content_start:
        raise UserError("a token straddles the end of the prompt and the assistant content; "
                        "set format.think_delimiter to text that starts on a token boundary")
    turn_end = first_token_at(turn_end_char - 1) + 1  # one past the EOS token
    if ids[turn_end - 1] != tokenizer.eos_token_id:
        raise UserError(f"could not find the closing {eos!r} token of the assistant turn (model.path tokenizer)")
    ids = ids[:turn_end]  # what follows the EOS (a newline of the template) is not part of the turn
    labels = [IGNORE_INDEX] * prompt_tokens + ids[prompt_tokens:]
    # a token that merges the thinking's last character with the following "\n" counts as thinking
    thinking_end = next((i for i, (start, _) in enumerate(offsets) if start >= think_end_char), len(ids))
    thinking_span = (first_token_at(think_char), thinking_end)
    # the "\n" before the answer delimiter may merge into the thinking's last token
    answer_char = think_end_char + 1 if layout.thinks else content_start
    return SFTExample(input_ids=ids, labels=labels, prompt_tokens=prompt_tokens, thinking_span=thinking_span,
                      answer_start=first_token_at(answer_char), turn_end=turn_end)


# --- overlong policies ------------------------------------------------------------------------------

def trim_thinking_middle(example: SFTExample, max_length: int) -> SFTExample | None:
    """Drop tokens from the middle of the thinking so the sequence fits; None when even no thinking won't.

    Keeps the question, the start and the END of the thinking (where the trace converges on the answer),
    the full answer and the closing end-of-turn token.
    """
    excess = len(example) - max_length
    if excess <= 0:
        return example
    start, end = example.thinking_span
    if end - start < excess:
        return None
    keep = (end - start) - excess
    cut_from = start + keep // 2
    cut_to = cut_from + excess
    ids = example.input_ids[:cut_from] + example.input_ids[cut_to:]
    labels = example.labels[:cut_from] + example.labels[cut_to:]
    return replace(example, input_ids=ids, labels=labels, thinking_span=(start, end - excess),
                   answer_start=example.answer_start - excess, turn_end=example.turn_end - excess)


def apply_overlong_policy(example: SFTExample, max_length: int, policy: str) -> SFTExample | None:
    """The example to train on under `policy`, or None when it is dropped.

    `truncate` returns the example whole: the trainer's `max_length` cuts it (keep_start), exactly
    what the paper's block size did, so the configured length is enforced in one place.
    """
    if len(example) <= max_length or policy == "truncate":
        return example
    if policy == "drop":
        return None
    if policy == "keep_answer":
        return trim_thinking_middle(example, max_length)
    raise ValueError(f"finetune.overlong_policy={policy!r} is not one of truncate, drop, keep_answer")


# --- the length report ------------------------------------------------------------------------------

def quantiles(values: Sequence[int], points: Iterable[float] = (0.1, 0.25, 0.5, 0.75, 0.9)) -> dict[str, float]:
    """Linear-interpolated quantiles (numpy's default), plus min/max/mean; {} for no values."""
    if not values:
        return {}
    ordered = sorted(values)
    out = {"min": ordered[0], "max": ordered[-1], "mean": sum(ordered) / len(ordered)}
    for q in points:
        pos = q * (len(ordered) - 1)
        lo, hi = math.floor(pos), math.ceil(pos)
        out[f"p{round(q * 100)}"] = ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)
    return out


def length_report(examples: Sequence[SFTExample], kept: Sequence[SFTExample | None], *, max_length: int,
                  policy: str, trace_source: str, n_bins: int = 20) -> dict[str, Any]:
    """Token-length distribution and what the overlong policy did to each row (written as json)."""
    lengths = [len(e) for e in examples]
    overlong = [e for e in examples if len(e) > max_length]
    cut_answer = sum(1 for e in overlong if e.answer_start >= max_length)
    top = max(lengths + [max_length])
    width = max(1, math.ceil(top / n_bins))
    counts = [0] * (math.ceil(top / width) + 1)
    for n in lengths:
        counts[n // width] += 1
    trained = [min(len(k), max_length) for k in kept if k is not None]
    return {
        "max_length": max_length,
        "policy": policy,
        "trace_source": trace_source,
        "n_rows": len(examples),
        "n_overlong": len(overlong),
        "frac_overlong": len(overlong) / len(examples) if examples else 0.0,
        "tokens": quantiles(lengths),
        "thinking_tokens": quantiles([e.thinking_span[1] - e.thinking_span[0] for e in examples]),
        "answer_tokens": quantiles([e.turn_end - e.answer_start for e in examples]),
        "prompt_tokens": quantiles([e.prompt_tokens for e in examples]),
        "outcome": {
            "n_trained": len(trained),
            "n_dropped": sum(1 for k in kept if k is None),
            # under `truncate`: rows that lose their end-of-turn token / their whole answer
            "n_truncated": len(overlong) if policy == "truncate" else 0,
            "n_answer_fully_cut": cut_answer if policy == "truncate" else 0,
            # the trainer drops rows whose prompt alone fills max_length (no token left to learn from)
            "n_prompt_too_long": sum(1 for e in examples if e.prompt_tokens >= max_length),
            "n_thinking_trimmed": sum(1 for e, k in zip(examples, kept, strict=True)
                                      if k is not None and len(k) < len(e)),
            "tokens_in_rows": sum(lengths),
            "tokens_trained": sum(trained),
        },
        "histogram": {"bin_width": width, "counts": counts},
    }


def summarize_report(report: Mapping[str, Any]) -> str:
    tokens, outcome = report["tokens"], report["outcome"]
    return (f"s1K token lengths: median {tokens['p50']:.0f}, p90 {tokens['p90']:.0f}, max {tokens['max']}; "
            f"{report['n_overlong']}/{report['n_rows']} rows exceed max_length={report['max_length']} "
            f"(policy {report['policy']}: {outcome['n_truncated']} truncated, {outcome['n_answer_fully_cut']} lose "
            f"the whole answer, {outcome['n_thinking_trimmed']} thinking-trimmed, {outcome['n_dropped']} dropped)")


# --- everything together ----------------------------------------------------------------------------

def build_sft_examples(rows: Sequence[Mapping[str, Any]], tokenizer, cfg: FinetuneConfig, fmt: ReasoningFormat,
                       ) -> tuple[list[SFTExample], dict[str, Any]]:
    """Tokenize every row, apply the overlong policy; returns (examples to train on, length report)."""
    from tqdm.auto import tqdm

    thinking_field, attempt_field = TRACE_FIELDS[cfg.trace_source]
    examples = [tokenize_example(tokenizer, row["question"], row[thinking_field], row[attempt_field], fmt)
                for row in tqdm(rows, desc="tokenizing s1K", disable=len(rows) < 200)]
    kept = [apply_overlong_policy(e, cfg.max_length, cfg.overlong_policy) for e in examples]
    report = length_report(examples, kept, max_length=cfg.max_length, policy=cfg.overlong_policy,
                           trace_source=cfg.trace_source)
    train = [k for k in kept if k is not None]
    if not train:
        raise UserError(f"finetune.overlong_policy={cfg.overlong_policy} leaves no rows at "
                        f"finetune.max_length={cfg.max_length}: raise max_length or use overlong_policy=truncate")
    return train, report


def to_dataset(examples: Sequence[SFTExample]):
    """A `datasets.Dataset` with `input_ids` and `labels`: trl treats it as already processed and only
    applies its `max_length` truncation to it."""
    import datasets

    return datasets.Dataset.from_dict({"input_ids": [e.input_ids for e in examples],
                                       "labels": [e.labels for e in examples]})
