"""SFT data: the s1 layout, assistant-only labels, bad rows, overlong policies, the length report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reasondiff.config import FinetuneConfig, ReasoningFormat
from reasondiff.core.errors import UserError
from reasondiff.finetune.data import (
    apply_overlong_policy,
    build_sft_examples,
    length_report,
    load_s1k_rows,
)
from reasondiff.lm.s1_layout import format_assistant
from reasondiff.lm.sft_example import IGNORE_INDEX, tokenize_example

FMT = ReasoningFormat()
QWEN = Path("/work/qwen05b")


def _row(**overrides) -> dict:
    row = {"question": "What is 2 + 3?", "solution": "5",
           "deepseek_thinking_trajectory": "First 2 + 3 = 5.\n\nCheck: 5 - 3 = 2. So the answer is 5.",
           "deepseek_attempt": "The answer is $\\boxed{5}$.",
           "gemini_thinking_trajectory": "Gemini thinks: 2 and 3 make 5.", "gemini_attempt": "Gemini says 5."}
    row.update(overrides)
    return row


def _write(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_format_assistant_is_the_s1_layout():
    text = format_assistant("step one\nstep two", "42", FMT)
    assert text == "<|im_start|>think\nstep one\nstep two\n<|im_start|>answer\nAnswer: 42"
    custom = ReasoningFormat(think_delimiter="<think>", answer_delimiter="</think>", answer_prefix="")
    assert format_assistant("t", "a", custom) == "<think>\nt\n</think>\na"


def _check_assistant_only_labels(tokenizer, example, question, thinking, attempt):
    ids, labels = example.input_ids, example.labels
    trained = [i for i, lab in enumerate(labels) if lab != IGNORE_INDEX]
    # every labelled position is contiguous from the start of the assistant content to the end
    assert trained == list(range(example.prompt_tokens, len(ids)))
    assert all(labels[i] == ids[i] for i in trained)
    # no question/system token carries loss: the unlabelled prefix is exactly the rendered prompt
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                           add_generation_prompt=True)
    assert tokenizer.decode(ids[:example.prompt_tokens]) == prompt
    assert question in tokenizer.decode(ids[:example.prompt_tokens])
    # ... and the labelled part is the assistant turn, closed by the EOS (<|im_end|>), which carries loss
    assert tokenizer.decode(ids[example.prompt_tokens:]) == format_assistant(thinking, attempt, FMT) + "<|im_end|>"
    assert ids[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>") and labels[-1] == ids[-1]
    # the spans point at the thinking and the answer
    start, end = example.thinking_span
    assert tokenizer.decode(ids[start:end]).strip() == thinking.strip()
    assert tokenizer.decode(ids[example.answer_start:example.turn_end]) == \
        "<|im_start|>answer\nAnswer: " + attempt + "<|im_end|>"


def test_only_the_assistant_turn_carries_loss(tiny_tokenizer):
    row = _row()
    example = tokenize_example(tiny_tokenizer, row["question"], row["deepseek_thinking_trajectory"],
                               row["deepseek_attempt"], FMT)
    _check_assistant_only_labels(tiny_tokenizer, example, row["question"], row["deepseek_thinking_trajectory"],
                                 row["deepseek_attempt"])


@pytest.mark.slow
@pytest.mark.skipif(not (QWEN / "tokenizer.json").exists(), reason="needs the offline Qwen at /work/qwen05b")
def test_only_the_assistant_turn_carries_loss_with_qwens_template():
    """The real template adds a default system turn; it must carry no loss either."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(QWEN)
    row = _row()
    example = tokenize_example(tokenizer, row["question"], row["deepseek_thinking_trajectory"],
                               row["deepseek_attempt"], FMT)
    assert "<|im_start|>system" in tokenizer.decode(example.input_ids[:example.prompt_tokens])
    _check_assistant_only_labels(tokenizer, example, row["question"], row["deepseek_thinking_trajectory"],
                                 row["deepseek_attempt"])


def test_trace_source_picks_the_fields_and_keeps_newlines(tmp_path, tiny_tokenizer):
    source = _write(tmp_path / "s1k.jsonl", [_row()])
    for trace_source, wanted, unwanted in (("deepseek", "= 5.\n\nCheck: 5 - 3", "Gemini"),
                                           ("gemini", "Gemini thinks", "Check")):
        cfg = FinetuneConfig(dataset=source, trace_source=trace_source, max_length=512)
        (example,), _ = build_sft_examples(load_s1k_rows(cfg), tiny_tokenizer, cfg, FMT)
        text = tiny_tokenizer.decode(example.input_ids)
        assert wanted in text and unwanted not in text


def test_missing_field_names_the_row_and_the_field(tmp_path):
    bad = _row()
    del bad["deepseek_attempt"]
    source = _write(tmp_path / "bad.jsonl", [_row(), _row(), bad])
    with pytest.raises(UserError, match=r"bad.jsonl: line 3 has no field deepseek_attempt"):
        load_s1k_rows(FinetuneConfig(dataset=source))


def test_list_trace_is_rejected_not_joined(tmp_path):
    """s1K v1.0 stores traces as lists; joining them would silently change the text."""
    source = _write(tmp_path / "v10.jsonl", [_row(deepseek_thinking_trajectory=["a", "b"])])
    with pytest.raises(UserError, match=r"row 0 field deepseek_thinking_trajectory is a list"):
        load_s1k_rows(FinetuneConfig(dataset=source))


def test_shared_sample_loads_and_tokenizes(shared_data, tiny_tokenizer):
    cfg = FinetuneConfig(dataset=str(shared_data / "s1k_schema_sample.jsonl"), limit_rows=10, max_length=4096)
    examples, report = build_sft_examples(load_s1k_rows(cfg), tiny_tokenizer, cfg, FMT)
    assert len(examples) == 10 and report["n_rows"] == 10
    assert all(e.input_ids[-1] == tiny_tokenizer.eos_token_id for e in examples)


# --- overlong policies --------------------------------------------------------------------------------

@pytest.fixture
def long_example(tiny_tokenizer):
    thinking = "We begin the trace here. " + " ".join(f"step {i} adds {i} apples." for i in range(60)) + \
        " Finally the total is 1770."
    return tokenize_example(tiny_tokenizer, "How many apples?", thinking, "The answer is 1770.", FMT)


def test_truncate_leaves_cutting_to_the_trainer(long_example):
    assert apply_overlong_policy(long_example, 64, "truncate") is long_example


def test_drop_drops_only_overlong_rows(long_example):
    assert apply_overlong_policy(long_example, 64, "drop") is None
    assert apply_overlong_policy(long_example, len(long_example), "drop") is long_example


def test_keep_answer_trims_the_middle_of_the_thinking(long_example, tiny_tokenizer):
    max_length = len(long_example) - 100
    trimmed = apply_overlong_policy(long_example, max_length, "keep_answer")
    assert len(trimmed) == max_length == len(trimmed.labels)
    p, (t0, t1) = long_example.prompt_tokens, long_example.thinking_span
    tail = long_example.turn_end - long_example.answer_start
    # question + start of the thinking untouched; the whole answer + EOS untouched, with their labels
    assert trimmed.input_ids[:t0 + 5] == long_example.input_ids[:t0 + 5]
    assert trimmed.input_ids[-tail:] == long_example.input_ids[-tail:]
    assert trimmed.labels[-tail:] == long_example.labels[-tail:]
    assert trimmed.labels[:p] == [IGNORE_INDEX] * p
    # the END of the thinking (where it reaches the answer) survives; its middle is gone
    text = tiny_tokenizer.decode(trimmed.input_ids)
    assert "Finally the total is 1770." in text and "We begin the trace" in text
    assert "step 30 adds 30" not in text
    assert text.endswith("<|im_start|>answer\nAnswer: The answer is 1770.<|im_end|>")
    assert trimmed.thinking_span == (t0, t1 - 100)


def test_keep_answer_drops_a_row_whose_answer_alone_is_too_long(long_example):
    too_short = len(long_example) - (long_example.thinking_span[1] - long_example.thinking_span[0]) - 1
    assert apply_overlong_policy(long_example, too_short, "keep_answer") is None


def test_length_report_counts_overlong_and_cut_answers(long_example, tiny_tokenizer):
    short = tokenize_example(tiny_tokenizer, "Q?", "short.", "A.", FMT)
    examples = [short, long_example, long_example]
    max_length = long_example.answer_start - 1  # the whole answer falls past the cut
    kept = [apply_overlong_policy(e, max_length, "truncate") for e in examples]
    report = length_report(examples, kept, max_length=max_length, policy="truncate", trace_source="deepseek")
    assert (report["n_rows"], report["n_overlong"]) == (3, 2)
    assert report["outcome"]["n_answer_fully_cut"] == 2
    assert report["tokens"]["max"] == len(long_example) and report["tokens"]["min"] == len(short)
    assert report["outcome"]["tokens_trained"] == len(short) + 2 * max_length
    assert sum(report["histogram"]["counts"]) == 3
    dropped = [apply_overlong_policy(e, max_length, "drop") for e in examples]
    report = length_report(examples, dropped, max_length=max_length, policy="drop", trace_source="deepseek")
    assert report["outcome"]["n_dropped"] == 2 and report["outcome"]["n_trained"] == 1


def test_policy_that_leaves_nothing_is_a_user_error(tmp_path, tiny_tokenizer):
    source = _write(tmp_path / "s1k.jsonl", [_row()])
    cfg = FinetuneConfig(dataset=source, max_length=16, overlong_policy="drop")
    with pytest.raises(UserError, match="finetune.max_length"):
        build_sft_examples(load_s1k_rows(cfg), tiny_tokenizer, cfg, FMT)
