"""The assistant turn of the fine-tune: thinking then answer, in the tuned model's layout
(`format.layout`; s1's `<|im_start|>think` ... `<|im_start|>answer` by default).

simplescaling/s1 trains and evaluates in the s1 layout; finetune writes it (SFT targets). The
strings live in `reasondiff/lm/layouts.py`, which bench, scan, analyze and intervene read too.
"""

from __future__ import annotations

from reasondiff.config.common import ReasoningFormat
from reasondiff.lm.layouts import layout_for


def thinking_start(fmt: ReasoningFormat) -> str:
    """What opens the thinking: the assistant content starts with it."""
    return layout_for(fmt, "tuned").thinking_start()


def answer_start(fmt: ReasoningFormat) -> str:
    """What closes the thinking and opens the answer."""
    return layout_for(fmt, "tuned").answer_start()


def format_assistant(thinking: str, attempt: str, fmt: ReasoningFormat) -> str:
    """The assistant content in the tuned layout. Traces are strings: never "\\n".join them."""
    return layout_for(fmt, "tuned").assistant_content(thinking, attempt)


def build_messages(question: str, thinking: str, attempt: str, fmt: ReasoningFormat) -> list[dict[str, str]]:
    return [{"role": "user", "content": question},
            {"role": "assistant", "content": format_assistant(thinking, attempt, fmt)}]
