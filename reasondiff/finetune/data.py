"""s1K-1.1 rows -> tokenized SFT examples in the tuned layout, with loss on the assistant turn only.

The assistant turn is `{think}\\n{thinking}\\n{answer}\\n{prefix}{attempt}` (simplescaling/s1; another
`format.layout` writes its own delimiters, reasondiff/lm/layouts.py) inside the model's own chat
template, the question being the user turn. One row's tokenization (`tokenize_example`: the whole
rendered conversation tokenized once, character spans mapped to tokens through the offset mapping,
so the labels, the thinking span and the closing end-of-turn token are exact even where BPE merges
across a boundary) lives in reasondiff/lm/sft_example.py: scan and analyze read rows through it too.

Overlong rows are the paper's silent pitfall: with block size 2048 most real s1K-1.1 traces are
longer, and right-truncation cuts the answer and the end-of-turn token away. `length_report`
says how many, and `apply_overlong_policy` offers `truncate` (paper), `drop`, `keep_answer`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from reasondiff.config import FinetuneConfig, ReasoningFormat
from reasondiff.core.errors import UserError
from reasondiff.core.progress import Progress
from reasondiff.lm.data_sources import load_rows, require_fields
from reasondiff.lm.holdout import HoldoutSplit, split_rows
from reasondiff.lm.sft_example import TRACE_FIELDS, SFTExample, tokenize_example, trim_thinking_middle

log = logging.getLogger(__name__)

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


# --- overlong policies ------------------------------------------------------------------------------

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
    thinking_field, attempt_field = TRACE_FIELDS[cfg.trace_source]
    examples = [tokenize_example(tokenizer, row["question"], row[thinking_field], row[attempt_field], fmt)
                for row in Progress(rows, desc="tokenizing s1K", unit="row", disable=len(rows) < 200)]
    kept = [apply_overlong_policy(e, cfg.max_length, cfg.overlong_policy) for e in examples]
    report = length_report(examples, kept, max_length=cfg.max_length, policy=cfg.overlong_policy,
                           trace_source=cfg.trace_source)
    train = [k for k in kept if k is not None]
    if not train:
        raise UserError(f"finetune.overlong_policy={cfg.overlong_policy} leaves no rows at "
                        f"finetune.max_length={cfg.max_length}: raise max_length or use overlong_policy=truncate")
    return train, report


def to_dataset(examples: Sequence[SFTExample], max_length: int | None = None):
    """A `datasets.Dataset` with `input_ids` and `labels`: trl treats it as already processed and only
    applies its `max_length` truncation to it. With `max_length` the rows are cut here (keeping the
    start, as trl does): trl's padding-free mode enforces no length itself."""
    import datasets

    cut = slice(None) if max_length is None else slice(0, max_length)
    return datasets.Dataset.from_dict({"input_ids": [e.input_ids[cut] for e in examples],
                                       "labels": [e.labels[cut] for e in examples]})
