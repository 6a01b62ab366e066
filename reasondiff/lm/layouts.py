"""Reasoning layouts: where a model's thinking opens and closes, and where its answer starts.

One object, `ReasoningLayout`, holds every string a stage needs; `layout_for(fmt, role)` gives
the layout of the base or the tuned model (`format.base_layout`, `format.layout`). Bench (prompts,
budget forcing, the grader's answer region), scan and analyze (the reasoning corpus) and intervene
all read it, so two models of a pair are each prompted and graded in their own layout.

- `s1` (simplescaling/s1 and s1.1, and this project's fine-tune): the assistant turn is
  `<|im_start|>think\\n` thinking `\\n<|im_start|>answer\\nAnswer: ` answer. The strings are the
  `format.*` fields. s1's evaluation opens the thinking with `<|im_start|>think` and no newline
  (the model writes it) and stops thinking at `<|im_start|>` (`bench.forcing.until_thinking`).
- `think` (DeepSeek-R1 and its distillations, Qwen3, OpenThinker2/3, Bespoke-Stratos after its
  re-release): `<think>\\n` thinking `\\n</think>\\n\\n` answer. Some chat templates (R1-Distill's
  current one) already end the generation prompt with `<think>\\n`; then the prompt opened it.
  Thinking stops at `</think>`, which must be one token (it is an added token in every tokenizer
  of this family).
- `none`: a plain chat model. The whole turn is its answer; nothing is opened or forced.

Budget forcing follows s1's harness with the layout's `thinking_end`: after a natural stop the
closing delimiter is appended; at the budget, "\\n" (unless the thinking ends with one), the
closing delimiter, the layout's separator and `Final Answer:` (s1's `thinking_end + "\\nFinal Answer:"`).
"""

from __future__ import annotations

from dataclasses import dataclass

from reasondiff.config.common import LAYOUTS, ReasoningFormat

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


@dataclass(frozen=True)
class ReasoningLayout:
    """The strings of one reasoning layout (see the module docstring)."""

    name: str
    """s1, think or none."""
    think_open: str = ""
    """What opens the thinking ("" = the layout has none)."""
    think_close: str = ""
    """What closes the thinking and opens the answer."""
    separator: str = ""
    """Between the closing delimiter and the answer (s1: "\\n", think: "\\n\\n")."""
    answer_prefix: str = ""
    """Written before the final answer in training text (s1: "Answer: ")."""
    final_answer_prompt: str = "Final Answer:"
    """What budget forcing writes after the closing delimiter at the budget."""
    stop: str = ""
    """The single token where thinking stops in budget forcing (s1: <|im_start|>, think: </think>)."""
    newline_after_open: bool = True
    """Whether bench's prompt opens the thinking with a newline after the delimiter (think: as R1's
    template does) or without (s1's evaluation: the model writes it)."""

    @property
    def thinks(self) -> bool:
        return bool(self.think_open)

    # --- training / corpus text ---------------------------------------------------------------
    def thinking_start(self) -> str:
        """What opens the thinking in an assistant turn."""
        return f"{self.think_open}\n" if self.thinks else ""

    def answer_start(self) -> str:
        """What closes the thinking and opens the answer."""
        return f"\n{self.think_close}{self.separator}{self.answer_prefix}" if self.thinks else ""

    def assistant_content(self, thinking: str, attempt: str) -> str:
        """The assistant turn in this layout; `none` has no thinking, only the answer."""
        if not self.thinks:
            return attempt.strip()
        return f"{self.thinking_start()}{thinking.strip()}{self.answer_start()}{attempt.strip()}"

    # --- prompts ------------------------------------------------------------------------------
    def opened_in(self, prompt: str) -> bool:
        """The rendered prompt already opens the thinking (a template that ends with `<think>\\n`)."""
        return self.thinks and prompt.rstrip("\n").endswith(self.think_open)

    def opening(self, prompt: str) -> str:
        """What bench appends to `prompt` to open the thinking ("" when the template did)."""
        if not self.thinks or self.opened_in(prompt):
            return ""
        return self.think_open + ("\n" if self.newline_after_open else "")

    # --- budget forcing -----------------------------------------------------------------------
    def natural_close(self) -> str:
        """Appended after the model stopped thinking by itself (its stop token dropped)."""
        return self.think_close

    def budget_close(self) -> str:
        """Appended (after a "\\n" unless the thinking ends with one) when the budget ran out."""
        return f"{self.think_close}{self.separator}{self.final_answer_prompt}"

    # --- grading ------------------------------------------------------------------------------
    @property
    def think_delimiter(self) -> str | None:
        """The grader's thinking delimiter (None: the layout has none)."""
        return self.think_open or None

    @property
    def answer_delimiter(self) -> str | None:
        """The grader's answer delimiter: the answer region starts after the last one."""
        return self.think_close or None


def layout_named(name: str, fmt: ReasoningFormat | None = None, *, until_thinking: str = "<|im_start|>") -> ReasoningLayout:
    """The layout called `name`; the s1 layout takes its strings from `fmt` (format.*) and its stop
    token from `until_thinking` (bench.forcing.until_thinking)."""
    fmt = fmt or ReasoningFormat()
    if name == "s1":
        return ReasoningLayout("s1", think_open=fmt.think_delimiter, think_close=fmt.answer_delimiter, separator="\n",
                               answer_prefix=fmt.answer_prefix, final_answer_prompt=fmt.final_answer_prompt,
                               stop=until_thinking, newline_after_open=False)
    if name == "think":
        return ReasoningLayout("think", think_open=THINK_OPEN, think_close=THINK_CLOSE, separator="\n\n",
                               final_answer_prompt=fmt.final_answer_prompt, stop=THINK_CLOSE)
    if name == "none":
        return ReasoningLayout("none", final_answer_prompt=fmt.final_answer_prompt)
    raise ValueError(f"unknown reasoning layout {name!r}; choose from {', '.join(LAYOUTS)}")


def layout_for(fmt: ReasoningFormat, role: str, *, until_thinking: str = "<|im_start|>") -> ReasoningLayout:
    """The layout of the base (`format.base_layout`) or tuned (`format.layout`) model: the one
    public entry point for every stage (bench, scan, analyze, intervene)."""
    if role not in ("base", "tuned"):
        raise ValueError(f"role must be base or tuned, got {role!r}")
    return layout_named(fmt.layout if role == "tuned" else fmt.base_layout, fmt, until_thinking=until_thinking)


def conversation_text(tokenizer, layout: ReasoningLayout, question: str, thinking: str, attempt: str) -> tuple[str, int]:
    """(text, where the assistant content starts) of one reasoning conversation as the model would
    have produced it: its chat template's generation prompt, then the assistant turn in `layout`,
    then its end-of-turn token. Built as prompt + content + EOS rather than by rendering the
    assistant message, because R1-style templates drop the thinking from assistant messages
    (`content.split('</think>')[-1]`) and may open `<think>\\n` in the prompt already."""
    from reasondiff.core.errors import UserError

    if not getattr(tokenizer, "chat_template", None):
        raise UserError("the tokenizer has no chat template; reasoning text is rendered through it")
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                           add_generation_prompt=True)
    content = layout.assistant_content(thinking, attempt)
    if layout.thinks and prompt.endswith(layout.think_open + "\n"):
        content = content[len(layout.thinking_start()):]
    elif layout.thinks and prompt.endswith(layout.think_open):
        content = content[len(layout.think_open):]
    eos = tokenizer.eos_token or ""
    return prompt + content + eos, len(prompt)
