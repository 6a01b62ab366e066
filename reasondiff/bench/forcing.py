"""s1's budget forcing (`bench.mode=forced`), done the way simplescaling/s1's evaluation harness
does it (eval/lm-evaluation-harness/lm_eval/models/vllm_causallms.py, `_model_generate`).

For a budget B of thinking tokens (s1's `max_tokens_thinking`; here each token limit):

1. The prompt of a thinking model is opened with `<|im_start|>think` and no newline; the model
   writes the newline itself. The prompt of any other model (the base) is left as it is.
2. Thinking: greedy, at most B tokens, stopping at `<|im_start|>` (`until_thinking`) or at the end
   of turn. With `thinking_n_ignore` = N, the first N times the model stops thinking, the stop
   token is dropped and "Wait" is appended (no space, no newline), and thinking resumes with at
   least one token. The B tokens count everything between the delimiters, the inserted "Wait"s
   included.
3. Closing: if the budget ran out, append "\\n" (only when the thinking does not already end with
   one) and then `<|im_start|>answer\\nFinal Answer:`. If the model stopped by itself, append
   `<|im_start|>answer` only. Each part is tokenized on its own and appended as ids; the text is
   never re-tokenized across the joins.
4. Answer: greedy, at most `max_tokens_answer` tokens (its own cap, not counted in B), stopping
   at the end of turn only.

Two deliberate differences from the harness:
- The budget is a total over the "Wait" rounds, which is the README's decrementing version. Token
  for token this equals the harness, which gives each round the full budget and then truncates
  to B. The one exception is the harness's quirk where a later round ends by itself past B: the
  truncated thinking is then closed as a natural stop. Here the budget counts as hit.
- A model whose prompt does not open the thinking (the base) that ends its turn has answered,
  and its generation ends there. s1 scores its base models with one plain generation. The
  harness, run on such a model, would append `<|im_start|>answer` and make it answer a second
  time.

Other layouts (reasondiff/lm/layouts.py) are forced by the same harness with their own strings, as
s1's harness takes `thinking_start` / `thinking_end` / `until_thinking` per model: the R1 /
Qwen3 / OpenThinker `think` layout opens with `<think>\n` (nothing when the chat template opened
it), stops thinking at the single token `</think>`, appends `</think>` after a natural stop and
`</think>\n\nFinal Answer:` at the budget (the harness's `thinking_end + "\nFinal Answer:"` with
the layout's own separator); "Wait" is appended where `</think>` was dropped.

One sweep serves every budget. Decoding is greedy, so the thinking at budget B is the first B
tokens of the thinking at the largest budget, closed by itself only if it ended before B. The
thinking is therefore generated once per question, and only the answers are generated per budget.
tests/test_bench_forcing.py checks this against separate runs at each budget.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from reasondiff.core.errors import UserError
from reasondiff.lm.layouts import ReasoningLayout


@dataclass
class ThinkingStream:
    token_ids: list[int] = field(default_factory=list)
    """Thinking ids, the inserted "Wait" ids included, stop tokens excluded."""
    token_times: list[float] = field(default_factory=list)
    """Seconds until token k existed (an inserted "Wait" gets the time of the stop it replaced)."""
    ended: bool = False
    """The last round ended at an end-of-thinking token within the budget it ran with."""
    end_token: int | None = None
    """That token (`<|im_start|>` or an end-of-turn id)."""
    end_time: float = 0.0
    """When that token existed."""
    wait_positions: list[int] = field(default_factory=list)
    """Index in token_ids where each inserted "Wait" starts."""

    def at_budget(self, budget: int) -> tuple[list[int], bool, float]:
        """(thinking ids, ended by itself, seconds) of the same greedy thinking under budget B ≤ the
        one it ran with. The stop token has to fit within B, so a natural end needs len < B."""
        if self.ended and len(self.token_ids) < budget:
            return list(self.token_ids), True, self.end_time
        ids = self.token_ids[:budget]
        return ids, False, self.token_times[len(ids) - 1] if ids else 0.0


@dataclass
class ForcedOutcome:
    completion: str
    """Generated and inserted text after the prompt: thinking, the closing delimiter, the answer."""
    thinking_tokens: int
    answer_tokens: int
    seconds: float
    finished: bool
    """The answer phase ended its turn within max_tokens_answer (or the turn ended while thinking)."""
    budget_hit: bool
    """The thinking ran out of budget and was closed with "Final Answer:"."""
    waits: int
    """"Wait"s inserted within the budget."""
    answer_prompt: list[int] | None = None
    """The exact ids the answer phase continued (prompt + thinking + closing); None if it did not run."""


def single_token(tokenizer, text: str, key: str) -> int:
    ids = encode(tokenizer, text)
    if len(ids) != 1:
        raise UserError(f"{key}={text!r} is {len(ids)} tokens for this tokenizer; s1 stops thinking at a single "
                        "token (<|im_start|> in Qwen's vocabulary, </think> in R1's)")
    return ids[0]


def encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def think(generator, prompts: Sequence[Sequence[int]], budget: int, *, stop_ids: Sequence[int],
          n_ignore: int, ignore_ids: Sequence[int]) -> list[ThinkingStream]:
    """The thinking phase of every prompt under `budget` tokens, with n_ignore "Wait" rounds."""
    streams = [ThinkingStream() for _ in prompts]
    elapsed = [0.0] * len(prompts)
    active = [i for i in range(len(prompts)) if budget > 0]
    for round_index in range(n_ignore + 1):
        if not active:
            break
        caps = {i: budget - len(streams[i].token_ids) for i in active}
        # one call per round: every sequence gets the largest remaining cap and is cut to its own
        # afterwards (greedy: a longer run's prefix is the shorter run)
        outputs = generator.generate([list(prompts[i]) + streams[i].token_ids for i in active], max(caps.values()),
                                     stop_ids=stop_ids, min_new_tokens=1 if n_ignore else 0)
        still = []
        for i, out in zip(active, outputs, strict=True):
            stream, cap = streams[i], caps[i]
            times = [elapsed[i] + t for t in out.token_times]
            content = out.token_ids[:-1] if out.finished else out.token_ids
            if not (out.finished and len(out.token_ids) <= cap):  # budget hit (the stop did not fit)
                stream.token_ids += content[:cap]
                stream.token_times += times[:min(cap, len(content))]
                continue
            stream.token_ids += content
            stream.token_times += times[:len(content)]
            end_time = times[len(out.token_ids) - 1]
            if round_index < n_ignore:
                stream.wait_positions.append(len(stream.token_ids))
                stream.token_ids += list(ignore_ids)
                stream.token_times += [end_time] * len(ignore_ids)
                if len(stream.token_ids) >= budget:  # the "Wait" itself used up the budget
                    del stream.token_ids[budget:], stream.token_times[budget:]
                    continue
                elapsed[i] = end_time
                still.append(i)
            else:
                stream.ended, stream.end_token, stream.end_time = True, out.token_ids[-1], end_time
        active = still
    return streams


def closing_ids(tokenizer, thinking_ids: Sequence[int], ended: bool, *, layout: ReasoningLayout) -> list[int]:
    """What s1 appends to close the thinking: the layout's closing delimiter after a natural stop
    (`<|im_start|>answer`, `</think>`); at the budget "\n" (unless the thinking ends with one) +
    the delimiter, the layout's separator and "Final Answer:" (`<|im_start|>answer\nFinal Answer:`,
    `</think>\n\nFinal Answer:`)."""
    if ended:
        return encode(tokenizer, layout.natural_close())
    text = tokenizer.decode(list(thinking_ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)
    newline = [] if text.endswith("\n") else encode(tokenizer, "\n")
    return newline + encode(tokenizer, layout.budget_close())


def force(generator, tokenizer, prompts: Sequence[Sequence[int]], limits: Sequence[int], *, opened: bool,
          layout: ReasoningLayout, n_ignore: int, ignore_str: str, max_tokens_answer: int,
          ) -> dict[tuple[int, int], ForcedOutcome]:
    """s1 budget forcing of every prompt at every limit: {(prompt index, limit): outcome}, with the
    strings of `layout` (its stop token ends the thinking, its delimiters close it).

    `prompts` are already opened with the layout's think delimiter when `opened` (a thinking model)."""
    end_of_turn = list(generator.stop_ids)
    key = "bench.forcing.until_thinking" if layout.name == "s1" else f"the {layout.name} layout's stop"
    think_stops = list(dict.fromkeys([single_token(tokenizer, layout.stop, key), *end_of_turn]))
    ignore_ids = encode(tokenizer, ignore_str) if n_ignore else []
    streams = think(generator, prompts, max(limits), stop_ids=think_stops, n_ignore=n_ignore, ignore_ids=ignore_ids)

    plans: dict[tuple[int, int], tuple[list[int], bool, float, list[int] | None]] = {}
    answer_keys: dict[tuple[int, object], list[int]] = {}  # one answer per distinct closed thinking
    for i, stream in enumerate(streams):
        for limit in limits:
            ids, ended, seconds = stream.at_budget(limit)
            if ended and not opened and stream.end_token in end_of_turn:
                plans[(i, limit)] = (ids, ended, seconds, None)  # the base answered and ended its turn
                continue
            tail = closing_ids(tokenizer, ids, ended, layout=layout)
            plans[(i, limit)] = (ids, ended, seconds, tail)
            answer_keys.setdefault((i, "ended" if ended else limit), list(prompts[i]) + ids + tail)
    keys = list(answer_keys)
    answers = dict(zip(keys, generator.generate([answer_keys[k] for k in keys], max_tokens_answer,
                                                stop_ids=end_of_turn), strict=True))

    outcomes = {}
    for (i, limit), (ids, ended, seconds, tail) in plans.items():
        waits = sum(1 for p in streams[i].wait_positions if p < len(ids))
        if tail is None:
            text = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
            outcomes[(i, limit)] = ForcedOutcome(text, len(ids), 0, seconds, True, False, waits)
            continue
        answer = answers[(i, "ended" if ended else limit)]
        answer_ids = answer.token_ids[:-1] if answer.finished else answer.token_ids
        text = tokenizer.decode(ids + tail + answer_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        seconds += answer.token_times[-1] if answer.token_times else 0.0
        outcomes[(i, limit)] = ForcedOutcome(text, len(ids), len(answer.token_ids), seconds, answer.finished,
                                             not ended, waits, answer_prompt=answer_keys[(i, "ended" if ended else limit)])
    return outcomes
