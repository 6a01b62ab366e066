"""The s1 layout of an assistant turn: `<|im_start|>think` thinking, then `<|im_start|>answer` answer.

simplescaling/s1 trains and evaluates in this layout; finetune writes it (SFT targets), bench
reuses it (opening the thinking in a prompt, budget forcing), analyze and scan feed reasoning text
in it so that the latents and layers the fine-tune shaped see the text they were trained on.
"""

from __future__ import annotations

from reasondiff.config.common import ReasoningFormat


def thinking_start(fmt: ReasoningFormat) -> str:
    """What opens the thinking: the assistant content starts with it (bench appends it to the prompt)."""
    return f"{fmt.think_delimiter}\n"


def answer_start(fmt: ReasoningFormat) -> str:
    """What closes the thinking and opens the answer (bench appends it when the token budget runs out)."""
    return f"\n{fmt.answer_delimiter}\n{fmt.answer_prefix}"


def format_assistant(thinking: str, attempt: str, fmt: ReasoningFormat) -> str:
    """The assistant content in the s1 layout. Traces are strings: never "\\n".join them."""
    return f"{thinking_start(fmt)}{thinking.strip()}{answer_start(fmt)}{attempt.strip()}"


def build_messages(question: str, thinking: str, attempt: str, fmt: ReasoningFormat) -> list[dict[str, str]]:
    return [{"role": "user", "content": question},
            {"role": "assistant", "content": format_assistant(thinking, attempt, fmt)}]
