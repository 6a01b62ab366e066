"""Reasoning conversations for analyze: the fine-tune's own layout (chat template, s1 think/answer
delimiters), one per context, the middle of a long thinking dropped, right padding marked."""

from __future__ import annotations

import pytest
import torch

from reasondiff.analyze.texts import reasoning_conversations
from reasondiff.config import ReasoningFormat
from reasondiff.lm.sft_example import conversation_example

FMT = ReasoningFormat()
QUESTION, ATTEMPT = "What is 2 + 3?", "The answer is 5."
THINKING = " ".join(f"step {i} adds one more apple to the basket." for i in range(40))


def test_a_conversation_is_the_sequence_the_fine_tune_trained_on(tiny_tokenizer):
    from reasondiff.lm.sft_example import tokenize_example

    ids = conversation_example(tiny_tokenizer, QUESTION, THINKING, ATTEMPT, FMT, max_length=10_000).input_ids
    assert ids == tokenize_example(tiny_tokenizer, QUESTION, THINKING, ATTEMPT, FMT).input_ids
    text = tiny_tokenizer.decode(ids)
    assert FMT.think_delimiter in text and FMT.answer_delimiter in text and text.index(FMT.think_delimiter) < \
        text.index(FMT.answer_delimiter)


def test_a_long_conversation_loses_the_middle_of_its_thinking_only(tiny_tokenizer):
    full = conversation_example(tiny_tokenizer, QUESTION, THINKING, ATTEMPT, FMT, max_length=10_000).input_ids
    cut = conversation_example(tiny_tokenizer, QUESTION, THINKING, ATTEMPT, FMT, max_length=len(full) - 60).input_ids
    assert len(cut) == len(full) - 60
    text = tiny_tokenizer.decode(cut)
    assert QUESTION in text and ATTEMPT in text and FMT.think_delimiter in text and FMT.answer_delimiter in text
    assert "step 0 " in text and "step 39 " in text and "step 20 " not in text  # head and tail of the thinking kept
    assert cut[:20] == full[:20] and cut[-20:] == full[-20:]
    assert conversation_example(tiny_tokenizer, QUESTION, THINKING, ATTEMPT, FMT, max_length=10) is None


def test_reasoning_conversations_are_right_padded_and_marked(tiny_tokenizer):
    rows = [{"question": QUESTION, "deepseek_thinking_trajectory": THINKING[: 40 * (i + 1)], "deepseek_attempt": ATTEMPT}
            for i in range(5)]
    lengths = [len(conversation_example(tiny_tokenizer, r["question"], r["deepseek_thinking_trajectory"], ATTEMPT, FMT, 10_000).input_ids)
               for r in rows]
    texts = reasoning_conversations(rows, tiny_tokenizer, FMT, n_contexts=3, context_length=10_000)
    assert len(texts) == 3 and texts.length == max(lengths[:3])
    assert texts.valid.sum(1).tolist() == lengths[:3]
    assert texts.valid[:, 0].all() and not texts.valid[0, -1]  # padding on the right only
    clipped = reasoning_conversations(rows, tiny_tokenizer, FMT, n_contexts=5, context_length=lengths[1])
    assert clipped.length == lengths[1] and bool(clipped.valid.all(dim=1)[1:].all())
    with pytest.raises(Exception, match="gemini_thinking_trajectory"):
        reasoning_conversations(rows, tiny_tokenizer, FMT, n_contexts=1, context_length=512, trace_source="gemini")
    assert torch.equal(texts.input_ids[0, :lengths[0]], torch.tensor(conversation_example(
        tiny_tokenizer, QUESTION, rows[0]["deepseek_thinking_trajectory"], ATTEMPT, FMT, 10_000).input_ids))


def test_analyze_reads_the_real_s1k_rows_exactly_as_the_fine_tune_trains_on_them(tiny_tokenizer, shared_data):
    """One implementation of a training row's chat layout (reasondiff.lm): analyze's reasoning
    conversations are finetune's examples, token for token, whole and with the thinking's middle cut."""
    import json

    from reasondiff.config import FinetuneConfig
    from reasondiff.finetune.data import build_sft_examples

    rows = [json.loads(line) for line in (shared_data / "s1k_schema_sample.jsonl").read_text().splitlines()[:12]]
    whole = reasoning_conversations(rows, tiny_tokenizer, FMT, n_contexts=len(rows), context_length=10**6)
    trained, _ = build_sft_examples(rows, tiny_tokenizer, FinetuneConfig(max_length=10**6), FMT)
    assert [whole.input_ids[i, whole.valid[i]].tolist() for i in range(len(rows))] == [e.input_ids for e in trained]
    # a context shorter than most rows: both cut the same thinking tokens (finetune's keep_answer policy)
    length = sorted(len(e) for e in trained)[len(trained) // 2]
    cut = reasoning_conversations(rows, tiny_tokenizer, FMT, n_contexts=len(rows), context_length=length)
    kept, _ = build_sft_examples(rows, tiny_tokenizer, FinetuneConfig(max_length=length, overlong_policy="keep_answer"),
                                 FMT)
    assert len(kept) == len(cut) and sum(len(e) == length for e in kept) >= len(rows) // 2
    assert [cut.input_ids[i, cut.valid[i]].tolist() for i in range(len(cut))] == [e.input_ids for e in kept]
