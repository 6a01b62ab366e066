"""One training row in the fine-tune's chat layout, as token ids: what finetune trains on and what
scan and analyze read as reasoning text (one implementation, so the text a crosscoder is evaluated
on is the sequence the tuned model was trained on, token for token).

The conversation is the tuned model's chat template around its layout of the assistant turn
(`format.layout`, `reasondiff/lm/layouts.py`: s1's `<|im_start|>think` thinking `<|im_start|>answer`
answer, or R1's `<think>` thinking `</think>` answer), closed by the EOS; only the assistant turn
carries a loss. A conversation longer than a context loses the middle of its thinking
(`trim_thinking_middle`), never its prompt, delimiters or answer.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from reasondiff.config import ReasoningFormat
from reasondiff.core.errors import UserError
from reasondiff.lm.layouts import conversation_text, layout_for

TRACE_FIELDS: dict[str, tuple[str, str]] = {
    "deepseek": ("deepseek_thinking_trajectory", "deepseek_attempt"),
    "gemini": ("gemini_thinking_trajectory", "gemini_attempt"),
}
IGNORE_INDEX = -100
"""Label of a token that carries no loss (PyTorch cross-entropy's ignore_index)."""


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


def conversation_example(tokenizer, question: str, thinking: str, attempt: str, fmt: ReasoningFormat,
                         max_length: int) -> SFTExample | None:
    """The conversation as the fine-tune trained on it, cut to `max_length` tokens by dropping the
    middle of the thinking (analyze's reasoning text); None when even no thinking won't fit. Its
    `prompt_tokens` is where the assistant turn starts (the loss mask's start; intervene's ADL window)."""
    return trim_thinking_middle(tokenize_example(tokenizer, question, thinking, attempt, fmt), max_length)
